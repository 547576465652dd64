"""The benchmark suite's correctness anchor and the ``jit=True`` memory check.

The speed comparison in ``benchmarks/`` only means something if the three contenders compute the
same thing: with the same seed, initial weights and batch order, ppl_vae's training step and a
hand-written PyTorch VAE must follow the same loss trajectory.
"""

import gc

import pyro
import pytest
import torch

from benchmarks import numpyro_vae
from benchmarks.__main__ import main
from benchmarks.contenders import Setting, TorchVAE, initial_weights, make_contender
from benchmarks.memory import rss_mib, worker
from benchmarks.timing import fixed_batches
from ppl_vae import fit
from ppl_vae.data.tensors import iter_batches
from ppl_vae.estimators.registry import make_elbo
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE
from ppl_vae.train.epoch import epoch_generator
from ppl_vae.train.state import init_state, update

CPU = torch.device("cpu")


def _programs(weights, dtype):
    model, guide = VAE(weights["obs_dim"]).to(dtype=dtype), MLPEncoder(weights["obs_dim"]).to(dtype=dtype)
    model.decoder.load_state_dict(weights["decoder"])
    guide.net.load_state_dict(weights["encoder"])
    return model, guide


def _handwritten(weights, dtype):
    hand = TorchVAE(weights["obs_dim"]).to(dtype=dtype)
    hand.encoder.load_state_dict(weights["encoder"])
    hand.decoder.load_state_dict(weights["decoder"])
    return hand, torch.optim.Adam(hand.parameters(), lr=1e-3)


def _tolerance(dtype, n):
    # Per data point. float64 rounding is ~1e-16 relative, so 1e-6 leaves room for Adam's
    # amplification over the steps; float32 (eps 1.2e-7) on a loss of ~40 nats per point
    # accumulates a few 1e-5 over the same steps (fused vs looped Adam, summation order).
    return 1e-6 if dtype == torch.float64 else 1e-4


@pytest.mark.parametrize("estimator, dtype", [
    ("analytic", torch.float64), ("analytic", torch.float32), ("mc", torch.float64)])
def test_update_follows_handwritten_trajectory(digits, dtype, estimator):
    x = digits.train[:384].to(dtype)
    n, batch = x.shape[0], 64
    weights = initial_weights(x.shape[1], CPU, dtype, seed=1, first_batch=x[:batch])
    batches = [b[0] for b in iter_batches((x,), batch, shuffle=True,
                                          generator=torch.Generator().manual_seed(3))]
    batches = batches + batches  # two epochs, 12 steps

    hand, optimizer = _handwritten(weights, dtype)
    pyro.set_rng_seed(7)
    expected = []
    for b in batches:
        optimizer.zero_grad()
        loss = hand.loss(b, n, estimator)
        loss.backward()
        optimizer.step()
        expected.append(float(loss.detach()))

    model, guide = _programs(weights, dtype)
    state = init_state(model, guide, make_elbo(estimator), (batches[0],), num_data=n)
    pyro.set_rng_seed(7)
    got = []
    with pyro.validation_enabled(False):
        for b in batches:
            state, loss = update(state, (b,))
            got.append(float(loss))
    diff = (torch.tensor(got, dtype=torch.float64) - torch.tensor(expected, dtype=torch.float64))
    assert diff.abs().max() / n < _tolerance(dtype, n), (got, expected)
    # The trajectory moved: the agreement is not that of two frozen programs.
    assert abs(expected[-1] - expected[0]) / n > 1.0


def test_fit_history_matches_handwritten(digits):
    dtype = torch.float64
    x = digits.train[:300].to(dtype)
    n, batch, seed, epochs = x.shape[0], 64, 5, 2
    weights = initial_weights(x.shape[1], CPU, dtype, seed=2, first_batch=x[:batch])
    model, guide = _programs(weights, dtype)
    result = fit(model, guide, x, estimator="analytic", epochs=epochs, batch_size=batch,
                 seed=seed, lr=1e-3, progress=False)

    hand, optimizer = _handwritten(weights, dtype)
    pyro.set_rng_seed(seed)  # fit re-seeds right before its first step
    for epoch in range(1, epochs + 1):
        losses = []
        for (b,) in iter_batches((x,), batch, shuffle=True, generator=epoch_generator(seed, epoch)):
            optimizer.zero_grad()
            loss = hand.loss(b, n)
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        expected = -sum(losses) / len(losses) / n
        got = float(result.history.loc[epoch - 1, "train_elbo"])
        assert abs(got - expected) < 1e-6, (epoch, got, expected)


@pytest.mark.parametrize("estimator", ["analytic", "mc"])
def test_jit_draws_the_same_trajectory_as_eager(digits, estimator):
    x = digits.train[:256]
    batches = fixed_batches(x, 64, 6, seed=0)
    weights = initial_weights(x.shape[1], CPU, torch.float32, seed=0, first_batch=batches[0])
    setting = Setting(estimator, 1, False, 64, "digits")
    runs = {}
    with pyro.validation_enabled(False):
        for name in ("ppl_vae_eager", "ppl_vae_jit", "ppl_vae"):
            step = make_contender(name, setting, weights, x.shape[0], 1e-3, (VAE, MLPEncoder))
            pyro.set_rng_seed(11)
            runs[name] = torch.stack([step(b) for b in batches])
    # Same ops in the same order: equal up to float32 rounding of a ~1e4 total. `ppl_vae` is
    # fit's default (jit="auto"), which records these static programs.
    for name in ("ppl_vae_jit", "ppl_vae"):
        torch.testing.assert_close(runs[name], runs["ppl_vae_eager"], rtol=1e-5, atol=0.0)


def test_jit_memory_stays_flat(digits):
    """Pyro 1.9.2's JitTraceMeanField_ELBO re-traces every step (~2 MiB each); ours records once.

    Statistics, not timings: the number of recordings and resident memory over 300 steps after
    a warm-up (a 2 MiB/step leak would add ~600 MiB; 20 MiB leaves room for allocator noise).
    """
    x = digits.train
    batches = fixed_batches(x, 32, 8, seed=0)
    weights = initial_weights(x.shape[1], CPU, torch.float32, seed=0, first_batch=batches[0])
    model, guide = _programs(weights, torch.float32)
    elbo = make_elbo("analytic", jit=True)
    state = init_state(model, guide, elbo, (batches[0],), num_data=x.shape[0])
    with pyro.validation_enabled(False):
        for i in range(50):  # warm-up: recording, the checked replay, allocator pools
            state, _ = update(state, (batches[i % 8],))
        gc.collect()
        rss_before = rss_mib()
        for i in range(300):
            state, _ = update(state, (batches[i % 8],))
        gc.collect()
        growth = rss_mib() - rss_before
    recorder = elbo.recorder(state.loss_fn.model, state.loss_fn.guide)
    assert recorder.num_traces == 1
    assert growth < 20.0, growth


def test_suite_writes_table(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    main(["--data", "digits", "--batch", "32", "--particles", "1", "--estimator", "analytic",
          "--budget", "0", "--warmup", "1", "--min-rounds", "2", "--no-memory", "--no-main-job",
          "--no-numpyro", "--no-diagnostics", "--contenders", "torch", "ppl_vae_eager", "ppl_vae",
          "--output", str(out)])
    text = out.read_text()
    for needle in ("## Machine", "torch 2.", "pyro-ppl 1.", "digits b32 analytic K1 loop",
                   "ppl_vae_eager", "fused=True", "## Targets", "## GPU", "No GPU"):
        assert needle in text, needle


def test_memory_worker_reports_growth():
    m = worker(["--contender", "ppl_vae_jit", "--estimator", "mc", "--batch-size", "16",
                "--steps", "30", "--warmup", "10", "--samples", "2"])
    assert m["steps"] == 30 and len(m["samples"]) == 3
    assert m["peak_rss_mib"] >= m["after_warmup_mib"] > 0
    assert abs(m["growth_mib"]) < 20.0


def test_payback_counts_steps_to_win_back_the_compile_time():
    from benchmarks.timing import CaseResult, merge_repeats

    setting = Setting("analytic", 1, False, 128, "digits")
    r = CaseResult(setting, {"torch": 2.0, "ppl_vae": 2.0, "ppl_vae_compile": 1.5}, {},
                   first_s={"torch": 0.0, "ppl_vae": 0.2, "ppl_vae_compile": 5.2})
    assert r.payback_steps("ppl_vae_compile", "ppl_vae") == 5.0e3 / 0.5  # 5 s at 0.5 ms a step
    assert r.payback_steps("ppl_vae", "ppl_vae_compile") == float("inf")  # never faster
    again = CaseResult(setting, {"torch": 1.0, "ppl_vae": 1.2, "ppl_vae_compile": 0.7}, {},
                       first_s={"torch": 0.0, "ppl_vae": 0.2, "ppl_vae_compile": 4.0})
    merged = merge_repeats([r, again])
    assert merged.median_ms["torch"] == 1.5 and merged.ratio_range("ppl_vae") == (1.0, 1.2)


@pytest.mark.slow  # importing JAX and compiling with XLA: about 10 s on 2 busy cores
@pytest.mark.skipif(numpyro_vae.unavailable() is not None,
                    reason=str(numpyro_vae.unavailable()))
def test_numpyro_contender_trains_the_same_vae(digits):
    from benchmarks.timing import case_inputs

    setting = Setting("analytic", 1, False, 32, "digits")
    num_data, batches, weights = case_inputs(setting, CPU, torch.float32)
    m = numpyro_vae.measure(setting, weights, batches, num_data, budget_s=0.0, warmup=1,
                            min_rounds=2, max_rounds=2, clock="cpu")
    assert "error" not in m, m
    assert m["steps"] == 2 and m["median_ms"] > 0 and m["first_s"] > 0
    # Both clocks, every time; median_ms is the one asked for (`clock="cpu"` here).
    assert m["median_wall_ms"] > 0 and m["median_cpu_ms"] > 0
    assert m["median_ms"] == m["median_cpu_ms"]


def test_numpyro_targets_use_the_wall_clock_and_say_so():
    from argparse import Namespace

    from benchmarks.report import clock_lines, numpyro_target_rows, target_lines
    from benchmarks.timing import CaseResult

    def case(data, ours, wall, cpu):
        return CaseResult(Setting("analytic", 1, False, 128, data),
                          {"torch": 1.0, "ppl_vae": ours, "numpyro": wall, "numpyro_cpu": cpu}, {})

    # 784: ahead of NumPyro's wall clock (met) though behind its CPU clock; digits: behind.
    rows = numpyro_target_rows([case("784", 1.0, 1.25, 0.5), case("digits", 1.0, 0.8, 0.7)])
    assert [r[-1] for r in rows] == ["met", "NOT met"]
    assert rows[0][3].startswith("0.80x") and rows[1][3].startswith("1.25x")
    assert [r[-1] for r in numpyro_target_rows([])] == ["", ""]  # not run
    assert any("NumPyro (wall clock)" in line for line in target_lines([], []))
    (text, _) = clock_lines(Namespace(clock="wall"), ["torch", "numpyro", "numpyro_cpu"])
    assert "NumPyro's ratios use its **wall clock**" in text and "XLA" in text
    (mixed, _) = clock_lines(Namespace(clock="cpu"), ["torch", "numpyro", "numpyro_cpu"])
    assert "thread's CPU time" in mixed and "--clock wall" in mixed


def test_diagnostics_pass_table_and_exponent(tmp_path):
    from benchmarks.diagnostics import diagnostics_lines, growth_exponent
    from benchmarks.diagnostics import worker as diagnostics_worker
    from benchmarks.report import replace_section

    row = diagnostics_worker(["--stage", "evaluate", "--n", "60", "--folder", str(tmp_path)])
    assert row["stage"] == "evaluate" and row["seconds"] > 0 and row["peak_rss_mib"] > 0
    assert set(row["evaluation"]) >= {"elbo", "iwae"}
    # Time exactly linear in N gives exponent 1; quadratic gives 2.
    rows = [{"stage": s, "n": n, "seconds": 0.01 * n ** (1 if s != "report" else 2),
             "peak_rss_mib": 500.0} for s in ("evaluate", "to_arviz", "diagnose", "report")
            for n in (1_000, 10_000)]
    assert growth_exponent(rows, "evaluate") == pytest.approx(1.0)
    assert growth_exponent(rows, "report") == pytest.approx(2.0)
    lines = diagnostics_lines(rows, "python -m benchmarks --diagnostics-only")
    assert any("| diagnose | 1.00 |" in line and "| met |" in line for line in lines)
    assert any("| report | 2.00 |" in line and "NOT met" in line for line in lines)
    out = tmp_path / "B.md"
    out.write_text("# Benchmarks\n\n## Machine\n\nm\n\n## GPU\n\ng\n")
    replace_section(str(out), "Diagnostics at real size", lines)
    replace_section(str(out), "Diagnostics at real size", lines)  # replaced, not appended twice
    text = out.read_text()
    assert text.count("## Diagnostics at real size") == 1 and "## GPU" in text
    assert "## Machine" in text


def test_corpus_steps_prints_one_row_per_program(capsys):
    from benchmarks import corpus_steps

    assert corpus_steps.main(["--programs", "vae_soft", "--epochs", "2", "--warmup", "1",
                              "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| vae_soft")]
    (row,) = rows
    eager, default, ratio = (float(cell) for cell in row.strip("|").split("|")[1:])
    assert eager > 0 and default > 0 and ratio == pytest.approx(default / eager, abs=0.01)


def test_five_epoch_target_row_passes_and_fails():
    from benchmarks.report import five_epoch_row, target_lines

    fast = {"default_s": 3.0, "eager_s": 2.5, "ratio": 1.2, "repeats": 3, "met": True}
    assert five_epoch_row(fast)[-1] == "met" and "3.0 s vs 2.5 s" in five_epoch_row(fast)[3]
    assert five_epoch_row({**fast, "met": False})[-1] == "NOT met"
    assert any("5-epoch digits run" in line for line in target_lines([], [], fast))
    assert not any("5-epoch" in line for line in target_lines([], []))


@pytest.mark.slow  # two short fits on digits: about 10-20 s on 2 busy cores
def test_five_epoch_run_times_defaults_against_eager():
    from benchmarks.fit_steps import RATIO, SLACK_S, five_epoch_run

    before = torch.get_num_threads()
    r = five_epoch_run(repeats=1, epochs=1)
    assert r["default_s"] > 0 and r["eager_s"] > 0 and len(r["default_runs"]) == 1
    assert r["bound_s"] == pytest.approx(RATIO * r["eager_s"] + SLACK_S)
    assert r["met"] == (r["default_s"] <= r["bound_s"])
    assert torch.get_num_threads() == before  # fit's threads="auto" does not leak out


@pytest.mark.slow  # one fresh process importing ppl_vae
def test_make_run_names_a_failing_command():
    from benchmarks import main_job

    r = main_job.make_run(["--epochs", "none-such"], timeout=600)
    assert "error" in r and "whole_s" not in r
    assert main_job._cli_command()[0].endswith(("ppl-vae", "python", "python3"))


def test_diagnostics_goals_at_the_goal_size():
    from benchmarks.diagnostics import GOAL_N, diagnostics_lines, growth_exponent

    timings = {"draws": 100.0, "gaps": 20.0}
    rows = [{"stage": "diagnose", "n": n, "seconds": s, "peak_rss_mib": 900.0,
             "timings": timings} for n, s in ((10_000, 30.0), (GOAL_N, 160.0))]
    rows += [{"stage": "diagnose", "n": GOAL_N, "seconds": 90.0, "peak_rss_mib": 900.0,
              "variant": "--devices 2", "timings": timings},
             {"stage": "diagnose", "n": GOAL_N, "seconds": 400.0, "peak_rss_mib": 900.0,
              "variant": "recorded pass off", "timings": timings}]
    # The variants are extra rows of the table, not points of the growth exponent.
    assert growth_exponent(rows, "diagnose") == pytest.approx(
        growth_exponent(rows[:2], "diagnose"))
    text = "\n".join(diagnostics_lines(rows, "cmd"))
    assert "| diagnose at 60,000 rows, one process | <= 150 s | 160.0 s | NOT met |" in text
    assert "| diagnose at 60,000 rows, `--devices 2` | <= 0.6x of one process | 0.56x" in text
    assert "| diagnose (recorded pass off) | 60,000 | 400.0 |" in text
    assert "| --devices 2 | 90.0 | 100.0 | 20.0 |" in text
