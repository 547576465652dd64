"""``jit="auto"`` compiles in the background (``ppl_vae.recording.background``): training runs on
the recorded step meanwhile, switches to the compiled one once it is ready and agrees with the
recorded step, never waits for it, and keeps the recorded step where no compiler is available.
One compile is shared by the module (compiles are slow on two cores)."""

import pickle
import subprocess
import sys
import textwrap
import time
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppl_vae.recording.background as background
import ppl_vae.recording.compile as compile_module
from ppl_vae.estimators.registry import make_elbo
from ppl_vae.recording.compile import JitFallbackWarning
from ppl_vae.recording.inductor import inductor_unavailable
from ppl_vae.recording.summary import step_summary
from ppl_vae.train.state import init_state, update

D, Z = 6, 2


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(D, 2 * Z), nn.Linear(Z, D)

    def model(self, x):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(h[:, :Z], h[:, Z:].exp()).to_event(1))


def _losses(monkeypatch, *, background_on: bool, steps=16, wait=True, optimizer="adam",
            time_left=None):
    """Losses of ``steps`` steps from one seed, batches of 8, 8, 8 and a ragged 6 rows; with
    ``background_on`` the compile starts after 3 replays and (``wait``) the test waits for it
    before the next step, so that the switch happens at the same step on every machine."""
    monkeypatch.setenv("PPL_VAE_BACKGROUND_COMPILE", "3" if background_on else "0")
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE()
    x = torch.randn(30, D)
    state = init_state(vae.model, vae.guide, make_elbo("analytic", jit="auto"), (x[:8],),
                       num_data=30, batch_size=8, optimizer=optimizer)
    step = state.recorder if state.fused is None else state.fused
    step.time_left = time_left
    losses = []
    for i in range(steps):
        state, loss = update(state, (x[8 * (i % 4): 8 * (i % 4) + 8],))
        losses.append(float(loss))
        if wait:
            step = state.recorder if state.fused is None else state.fused
            assert step.wait_for_compiles(600), "the background compile took over 10 min"
    return losses, step_summary(state.recorder, state.fused, state.padding_note)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    if inductor_unavailable() is not None:
        pytest.skip(inductor_unavailable())
    return str(tmp_path_factory.mktemp("inductor"))


@pytest.fixture(scope="module", params=["adam", "sgd"])  # Adam fused into the step; SGD apart
def switched(request, cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPL_VAE_COMPILE_CACHE", cache)
        compiled = _losses(mp, background_on=True, optimizer=request.param)
        recorded = _losses(mp, background_on=False, optimizer=request.param)
    return compiled, recorded


def test_switches_to_the_compiled_step_with_the_recorded_losses(switched):
    (compiled, summary), (recorded, plain) = switched
    # One graph compiled in the background (the full batches'); the ragged batch's graph, whose
    # replays also pass the threshold, replays as recorded: one compile per run, and no padding
    # (a padded batch would draw other random numbers than eager).
    assert summary["graphs_compiled"] == 1 and summary["note"] is None, summary
    assert summary["background_seconds"] > 0 and summary["graphs_recorded"] == 2
    assert summary["padding"].startswith("not needed")
    assert plain["graphs_compiled"] == 0 and plain["note"] is None
    # Same seed, same random numbers: eager's sample path, the same history up to the kernels'
    # rounding. Before the switch (steps 1-4) bit for bit: starting the compile draws nothing.
    assert compiled[:4] == recorded[:4]
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(recorded), rtol=1e-5,
                               atol=1e-4)


def test_a_compile_that_would_not_pay_back_is_not_switched_to(monkeypatch, cache, switched):
    # (after `switched`: its compile is in the cache.) One second of training left: the switch
    # (about 4 s) would cost more than the compiled step saves; the run stays recorded.
    monkeypatch.setenv("PPL_VAE_COMPILE_CACHE", cache)
    losses, summary = _losses(monkeypatch, background_on=True, time_left=lambda: 1.0)
    recorded, _ = _losses(monkeypatch, background_on=False)
    assert summary["graphs_compiled"] == 0 and summary["background_seconds"] > 0
    assert summary["note"].startswith("compiled, but not switched to: about 1 s"), summary
    assert losses == recorded  # never switched: the recorded step throughout, bit for bit


def test_switch_pays_where_the_time_left_repays_its_cost():
    cost, share = background.SWITCH_COST_S, background.SAVED_SHARE
    assert background.switch_pays(None) == (True, None)  # fit's loop not driving: unknown
    assert background.switch_pays(lambda: None) == (True, None)  # before the first epoch ended
    assert background.switch_pays(lambda: 2 * cost / share)[0]
    pays, note = background.switch_pays(lambda: 0.5 * cost / share)
    assert not pays and "not switched to" in note


def test_background_compiles_are_the_default(monkeypatch):
    monkeypatch.delenv("PPL_VAE_BACKGROUND_COMPILE", raising=False)
    assert compile_module.background_after() == compile_module.BACKGROUND_AFTER == 50
    for off in ("0", "off"):
        monkeypatch.setenv("PPL_VAE_BACKGROUND_COMPILE", off)
        assert compile_module.background_after() == float("inf")


def test_a_graph_travels_to_the_worker_without_drawing():
    # A pickled GraphModule is re-traced when unpickled, which ran its noise once and froze it
    # into the graph. Rebuilt from its node list, the graph draws anew on every call.
    from torch.fx.experimental.proxy_tensor import make_fx

    from ppl_vae.recording.portable import portable, rebuild

    def noisy(loc):
        return loc + torch.randn(3, 2)

    graph = make_fx(noisy)(torch.zeros(3, 2))
    state = torch.get_rng_state()
    rebuilt = rebuild(pickle.loads(pickle.dumps(portable(graph))))
    assert torch.equal(state, torch.get_rng_state())  # nothing drawn in transit
    torch.manual_seed(1)
    want = graph(torch.zeros(3, 2))
    torch.manual_seed(1)
    torch.testing.assert_close(rebuilt(torch.zeros(3, 2)), want, rtol=0, atol=0)
    assert not torch.equal(rebuilt(torch.zeros(3, 2)), want)  # a new draw each call


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])  # unfused; Adam fused into the step
def test_no_compiler_keeps_the_recorded_step_without_a_warning(monkeypatch, optimizer):
    monkeypatch.setattr(background, "inductor_unavailable", lambda: "no C++ compiler (test)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses, summary = _losses(monkeypatch, background_on=True, steps=8, optimizer=optimizer)
    assert summary["graphs_compiled"] == 0 and summary["note"] == "no C++ compiler (test)"
    assert summary["eager"] is None and torch.isfinite(torch.tensor(losses)).all()


def test_a_stateful_program_stays_eager(monkeypatch):
    monkeypatch.setenv("PPL_VAE_BACKGROUND_COMPILE", "1")
    calls = []

    def model(x):
        calls.append(1)  # state the programs keep: guarded, never recorded nor compiled
        loc = pyro.param("loc", torch.zeros(D))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc + len(calls) * 0.0, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    x = torch.randn(8, D)
    with pytest.warns(JitFallbackWarning):
        state = init_state(model, guide, make_elbo("mc", jit="auto"), (x,), num_data=8)
        for _ in range(6):
            state, _ = update(state, (x,))
    assert state.recorder.eager_reason is not None
    assert state.recorder.num_compiled == 0 and not state.recorder._entries


_SHORT_RUN = textwrap.dedent("""
    import os, sys, time
    os.environ["PPL_VAE_BACKGROUND_COMPILE"] = "1"
    os.environ["PPL_VAE_COMPILE_CACHE"] = sys.argv[1]
    import torch, pyro, pyro.distributions as dist
    import ppl_vae
    def model(x):
        loc = pyro.param("loc", torch.zeros(4))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)
    def guide(x):
        pass
    result = ppl_vae.fit(model, guide, torch.randn(64, 4), batch_size=8, epochs=2,
                         progress=False)
    summary = result.settings["compile"]
    print("compiling", summary["graphs_compiled"] == 0
          and summary["note"] == "the background compile was still under way when training ended")
    print("done", time.time(), flush=True)
""")


def test_a_short_run_does_not_wait_for_the_compiler(tmp_path):
    if inductor_unavailable() is not None:
        pytest.skip(inductor_unavailable())
    out = subprocess.run([sys.executable, "-c", _SHORT_RUN, str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=600)
    ended = time.time()
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    # The run ended with its compile still under way (a cold cache takes many seconds), and
    # the process exited without joining it.
    assert lines["compiling"] == "True"
    assert ended - float(lines["done"]) < 10.0
