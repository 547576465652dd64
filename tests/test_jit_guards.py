"""The default step (``jit="auto"``) has eager semantics on impure programs
(``tests/programs/impure.py``, ``ppl_vae.recording.guards``): Python values the programs read
are guarded (the step is recorded again when one changes), programs that keep state or draw
from Python's ``random`` train eagerly with one warning, their exceptions reach the caller with
the epoch and step, and non-finite losses, parameters and validation ELBOs stop training."""

import re
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from programs import impure

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.recording.compile import JitFallbackWarning, TraceOnce
from ppl_vae.recording.guards import Watch, freeze
from ppl_vae.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ppl_vae.train.epoch import STEP_NOTE
from ppl_vae.train.result import TrainingDivergedError

SCHEDULES = ["attribute", "global", "object", "closure"]


def _fit(make, jit, *, epochs=3, weight=50.0, **options):
    """Train ``make``'s programs (float64, seed 0); ``set_weight(weight)`` after epoch 1.
    Returns (result, the fallback warnings raised)."""
    pyro.clear_param_store()
    torch.manual_seed(0)  # the networks' initial weights
    model, guide, set_weight = make(torch.float64)
    callbacks = [] if set_weight is None else [
        lambda record, state: record["epoch"] == 1 and set_weight(weight)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ppl_vae.fit(model, guide, impure.data(torch.float64), epochs=epochs,
                             batch_size=16, seed=0, dtype=torch.float64, jit=jit,
                             callbacks=callbacks, progress=False, **options)
    return result, [w for w in caught if issubclass(w.category, JitFallbackWarning)]


def _recorders(result) -> list[TraceOnce]:
    return [entry[2] for entry in result.state.loss_fn.elbo._recorders.values()]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_schedule_set_in_python_is_followed_by_the_recorded_step(schedule):
    make = getattr(impure, f"make_{schedule}")
    auto, fallbacks = _fit(make, "auto")
    eager, _ = _fit(make, False)
    assert not fallbacks  # still recorded: the change was guarded, not given up on
    (recorder,) = _recorders(auto)
    assert recorder.eager_reason is None and recorder.rerecords == 1
    # Same ops and draws: equal up to the order of additions.
    torch.testing.assert_close(torch.tensor(auto.history["train_elbo"].to_numpy()),
                               torch.tensor(eager.history["train_elbo"].to_numpy()),
                               rtol=1e-10, atol=0.0)
    # The 50x KL weight from epoch 2 lowers the objective: the test can fail.
    unchanged, _ = _fit(make, "auto", weight=1.0)
    assert auto.history["train_elbo"].iloc[1] < unchanged.history["train_elbo"].iloc[1] - 1.0


@pytest.mark.parametrize("kind, why", [("counter", "self.calls"),
                                       ("random", "Python's random.random")])
def test_programs_that_keep_state_or_draw_from_python_train_eagerly(kind, why):
    make = getattr(impure, f"make_{kind}")
    auto, fallbacks = _fit(make, "auto")
    eager, _ = _fit(make, False)
    assert len(fallbacks) == 1 and why in str(fallbacks[0].message)
    assert _recorders(auto)[0].eager_reason is not None
    # The trial runs of the recording left no trace: same calls, same random numbers.
    torch.testing.assert_close(torch.tensor(auto.history["train_elbo"].to_numpy()),
                               torch.tensor(eager.history["train_elbo"].to_numpy()),
                               rtol=1e-10, atol=0.0)


def test_an_exception_of_the_programs_reaches_the_caller_with_epoch_and_step():
    notes = {}
    for jit in ("auto", False):
        with pytest.raises(RuntimeError, match="failed at its call 15") as raised:
            _fit(impure.make_raising, jit)
        notes[jit] = raised.value.__notes__
    # The same step under both modes, mid-training: the pre-flight runs the guide fewer than
    # 15 times (how many is the pre-flight's business), then 4 steps per epoch.
    assert notes["auto"] == notes[False]
    assert re.fullmatch(rf"{STEP_NOTE} [23], step [1-4]", notes["auto"][0]), notes


def test_a_program_turning_nan_stops_training_at_the_same_step():
    where = {}
    for jit in ("auto", False):
        with pytest.raises(TrainingDivergedError, match=r"epoch [23], step [1-4] of 4") as raised:
            _fit(impure.make_nan, jit)
        where[jit] = (raised.value.epoch, raised.value.step, len(raised.value.history))
    assert where["auto"] == where[False]
    assert where["auto"][2] == where["auto"][0] - 1  # the epochs before it are kept


def _where_nan_gradient(x):
    # Finite loss, NaN gradient: torch.where's unselected branch (sqrt of a negative number).
    w = pyro.param("w", torch.tensor(1.0, dtype=x.dtype))
    shift = torch.where(w > 0, w, torch.sqrt(w - 2.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(shift, 1.0).expand(x.shape[1:]).to_event(1), obs=x)


def _empty_guide(x):
    pass


@pytest.mark.parametrize("jit", ["auto", False])
def test_a_nan_gradient_with_a_finite_loss_stops_training(jit):
    data = impure.data(torch.float64)
    with pytest.raises(TrainingDivergedError, match="parameter became non-finite at epoch 1"):
        ppl_vae.fit(_where_nan_gradient, _empty_guide, data, epochs=2, batch_size=64,
                    dtype=torch.float64, jit=jit, progress=False)


def test_a_nan_validation_elbo_stops_training():
    data = impure.data(torch.float64)
    validation = data[:8].clone()
    validation[0, 0] = 1e200  # finite data whose squared residual overflows: ELBO NaN
    with pytest.raises(TrainingDivergedError, match="validation ELBO became nan at epoch 1"):
        ppl_vae.fit(_mean_model, _empty_guide, data, validation_data=validation, epochs=2,
                    batch_size=16, dtype=torch.float64, progress=False)


def _mean_model(x):
    loc = pyro.param("loc", torch.zeros(x.shape[1], dtype=x.dtype))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def test_guards_see_reads_and_writes_of_attributes_globals_and_closures():
    model, guide, set_weight = impure.make_closure(torch.float64)
    x = impure.data(torch.float64)[:4]
    with Watch() as watch:
        guide(x)
    guards = watch.guards()
    labels = " | ".join(label for label, _, _ in guards.reads)
    assert "the closure variable weight" in labels
    before = guards.snapshot()
    assert guards.changed(before) is None
    set_weight(2.0)
    assert "closure variable weight" in guards.changed(before)
    set_weight(1.0)
    assert guards.changed(before) is None


def test_freeze_compares_values_not_identities_of_scalars():
    assert freeze(float("nan")) == freeze(float("nan"))
    t = torch.zeros(2)
    before = freeze(t)
    t.add_(1.0)  # an in-place write is a change
    assert freeze(t) != before
    assert freeze({"a": [1, 2.5]}) == freeze({"a": [1, 2.5]})
    assert freeze({"a": [1, 2.5]}) != freeze({"a": [1, 2.0]})


PROGRAM = """
import pyro, pyro.distributions as dist, torch
model_calls = guide_calls = 0  # the model and the guide share this module
def model(x):
    global model_calls
    model_calls += 1
    w = pyro.param('w', lambda: torch.zeros(2, 64, dtype=x.dtype))
    scale = float('nan') if model_calls >= NAN_AT else 1.0
    with pyro.plate('data', x.shape[0]):
        z = pyro.sample('z', dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample('x', dist.Normal(z @ w, scale).to_event(1), obs=x)
def guide(x):
    global guide_calls
    guide_calls += 1
    if guide_calls == FAIL_AT:
        raise RuntimeError('the guide gave up')
    a = pyro.param('a', lambda: torch.zeros(64, 2, dtype=x.dtype))
    with pyro.plate('data', x.shape[0]):
        pyro.sample('z', dist.Normal(x @ a, 1.0).to_event(1))
"""


# The digits: 12 steps per epoch and 3 validation batches; about a dozen calls of each program
# before the first step (two of them the check that the ragged last batch can be padded,
# ppl_vae.recording.padding): the guide's 30th call, the model's 29th, is a step of epoch 2.
@pytest.mark.parametrize("fail_at, nan_at, message", [
    (30, 10**6, "RuntimeError: the guide gave up"),
    (-1, 29, r"the loss became nan at epoch 2, step \d+ of 12"),
])
def test_cli_exits_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys, fail_at,
                                                                    nan_at, message):
    source = tmp_path / "mine.py"
    source.write_text(PROGRAM.replace("FAIL_AT", str(fail_at)).replace("NAN_AT", str(nan_at)))
    out = tmp_path / "run"
    code = main(["train", "--model", f"{source}:model", "--guide", f"{source}:guide",
                 "--out", str(out), "--epochs", "3", "--no-progress", "--eval-samples", "3"])
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if "warning: jit='auto': the programs change the global" not in line]
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert re.search(r"epoch 2, step \d+", err[0])
    assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] == 1


STEP = {"scale": 1.0}


def _scaled_loss(x, w):
    return (w * x).sum() * STEP["scale"]


class _Holder(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = w


@pytest.mark.parametrize("fallback", [True, False])
def test_a_value_changing_at_every_step_is_recorded_8_times_then_given_up(fallback):
    w = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    x = torch.ones(3, dtype=torch.float64)

    def fn(x):
        return _scaled_loss(x, w)

    recorder = TraceOnce(fn, (_Holder(w),), fallback=fn if fallback else None)
    try:
        for i in range(9):  # the first recording, then 8 more for 8 changed values
            STEP["scale"] = 1.0 + i
            assert float(recorder(x)) == pytest.approx(6.0 * (1.0 + i), rel=1e-12)
        assert recorder.num_traces == 9 and recorder.eager_reason is None
        STEP["scale"] = 20.0
        if not fallback:
            with pytest.raises(ValueError, match="the global STEP .* changed again"):
                recorder(x)
            return
        with pytest.warns(JitFallbackWarning, match="the global STEP .* changed again"):
            assert float(recorder(x)) == pytest.approx(120.0, rel=1e-12)
    finally:
        STEP["scale"] = 1.0


def test_the_fused_compiled_step_follows_a_schedule_set_in_python():
    from ppl_vae.recording.compile import inductor_unavailable

    if inductor_unavailable():
        pytest.skip(inductor_unavailable())
    compiled, fallbacks = _fit(impure.make_attribute, "compile", epochs=2)
    eager, _ = _fit(impure.make_attribute, False, epochs=2)
    assert not fallbacks and compiled.state.fused is not None
    assert compiled.state.fused.recorder.rerecords == 1
    # Inductor's loops round differently from eager's kernels: close, not equal.
    torch.testing.assert_close(torch.tensor(compiled.history["train_elbo"].to_numpy()),
                               torch.tensor(eager.history["train_elbo"].to_numpy()),
                               rtol=1e-6, atol=0.0)


def test_recording_under_cprofile_gives_the_profiler_back():
    # A user profiling a run with cProfile: the guards' watch installs its own hook for the
    # recording run and must hand the profiler back (getprofile returns the Profile object).
    import cProfile
    import sys

    from ppl_vae.recording.compile import TraceOnce

    def fn(x):
        return (x * 2).sum()

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        with torch.no_grad():
            for _ in range(3):
                TraceOnce(fn, ())(torch.ones(3))
        assert sys.getprofile() is profiler
    finally:
        profiler.disable()
    # It kept profiling through the recordings: the program's calls are in its statistics.
    assert any(getattr(entry.code, "co_name", "") == "fn" for entry in profiler.getstats())
