"""``jit="auto"`` / ``"compile"`` (``ppl_vae.recording.jit.TracedELBO``): recorded where the
programs are static, eager with one warning naming why where they are not."""

import array
import itertools
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import ppl_vae
from ppl_vae.estimators.registry import make_elbo
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE
from ppl_vae.recording.compile import JitFallbackWarning, TraceOnce, inductor_unavailable
from ppl_vae.recording.jit import TracedELBO, check_jit
from ppl_vae.train.state import init_state, update

SETTINGS = {"shift": 0.0}


def model(x):
    noise = pyro.param("noise", torch.tensor(1.0, dtype=x.dtype), constraint=constraints.positive)
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), x.new_ones(()) * 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu + SETTINGS["shift"], noise), obs=x)


def guide(x):
    loc = pyro.param("mu_loc", torch.tensor(0.0, dtype=x.dtype))
    scale = pyro.param("mu_scale", torch.tensor(1.0, dtype=x.dtype), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


# State the guards (ppl_vae.recording.guards) cannot see: items of a C array.
HIDDEN = array.array("d", [0.0])


def hidden_model(x):
    noise = pyro.param("noise", torch.tensor(1.0, dtype=x.dtype), constraint=constraints.positive)
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), x.new_ones(()) * 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu + HIDDEN[0], noise), obs=x)


def reading_model(x):
    # The way users write data-dependent programs: a Python branch on a tensor's value.
    noise = pyro.param("noise", torch.tensor(1.0, dtype=x.dtype), constraint=constraints.positive)
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), x.new_ones(())))
    shift = 5.0 if x.mean() > 0 else -5.0
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu + shift, noise), obs=x)


def _recorder(state) -> TraceOnce:
    elbo = state.loss_fn.elbo
    assert isinstance(elbo, TracedELBO)
    # The training step's recorder (with a padded last batch, of the padded programs).
    assert state.recorder is elbo.recorder(state.loss_fn.model, state.loss_fn.guide)
    return state.recorder


def _train(program, jit, data, steps=6, seed=3):
    pyro.clear_param_store()
    state = init_state(program, guide, make_elbo("mc", jit=jit), (data[0],), num_data=64)
    pyro.set_rng_seed(seed)
    losses = []
    with pyro.validation_enabled(False):
        for i in range(steps):
            state, loss = update(state, (data[i % len(data)],))
            losses.append(loss)
    return state, torch.stack(losses)


def _batches(dtype=torch.float64, n=4):
    g = torch.Generator().manual_seed(0)
    return [(2.0 + torch.randn(16, generator=g)).to(dtype) for _ in range(n)]


def test_auto_records_a_static_program_and_matches_eager():
    data = _batches()
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitFallbackWarning)
        state, auto = _train(model, "auto", data)
    recorder = _recorder(state)
    assert recorder.eager_reason is None and recorder.num_traces == 1
    _, eager = _train(model, False, data)
    torch.testing.assert_close(auto, eager, rtol=1e-12, atol=0.0)  # same ops, same draws


def test_auto_falls_back_on_a_program_that_reads_values_and_says_where():
    data = _batches()
    with pytest.warns(JitFallbackWarning, match=r"read a tensor's value.*test_jit\.py:\d+") as rec:
        state, auto = _train(reading_model, "auto", data)
    assert len([w for w in rec if w.category is JitFallbackWarning]) == 1  # one line, once
    assert _recorder(state).eager_reason is not None and _recorder(state).num_traces == 0
    _, eager = _train(reading_model, False, data)
    torch.testing.assert_close(auto, eager, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("jit", [True, "auto"])
def test_a_global_changed_after_recording_is_guarded_and_recorded_again(jit):
    data = _batches()
    pyro.clear_param_store()
    state = init_state(model, guide, make_elbo("mc", jit=jit), (data[0],), num_data=64)
    try:
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("error", JitFallbackWarning)
            state, _ = update(state, (data[0],))  # recorded with shift 0
            SETTINGS["shift"] = 3.0  # read by the model from Python: guarded
            for batch in data[1:]:
                state, loss = update(state, (batch,))
            pyro.set_rng_seed(1)
            recorded = state.loss_fn(data[0])
            pyro.set_rng_seed(1)
            eager = make_elbo("mc")(state.loss_fn.model, state.loss_fn.guide)(data[0])
    finally:
        SETTINGS["shift"] = 0.0
    recorder = _recorder(state)
    assert recorder.eager_reason is None and recorder.num_traces == 2 and recorder.rerecords == 1
    torch.testing.assert_close(recorded, eager, rtol=1e-12, atol=0.0)  # with shift 3


@pytest.mark.parametrize("jit", [True, "auto"])
def test_a_program_that_changes_after_recording_is_caught_on_the_next_batch(jit):
    data = _batches()
    pyro.clear_param_store()
    state = init_state(hidden_model, guide, make_elbo("mc", jit=jit), (data[0],), num_data=64)
    try:
        with pyro.validation_enabled(False):
            state, _ = update(state, (data[0],))  # recorded with shift 0, checked
            HIDDEN[0] = 3.0  # Python state neither the recording nor the guards can see
            if jit is True:
                with pytest.raises(ValueError, match="static structure"):
                    update(state, (data[1],))
                return
            with pytest.warns(JitFallbackWarning, match="new batch of the same shape"):
                state, loss = update(state, (data[1],))
            assert torch.isfinite(loss)
            state, _ = update(state, (data[2],))  # eager from now on, no second warning
    finally:
        HIDDEN[0] = 0.0
    assert "new batch" in _recorder(state).eager_reason


def test_first_call_compares_gradients_not_only_the_loss():
    # Same value, a different gradient on every other call: the recording (an even call) and
    # the eager check (an odd one) disagree on the gradient only. (A counter the guards cannot
    # see: a dict's would make the recorder give up before it compares.)
    calls = itertools.count(1)
    w = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    class Program(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = w

        def forward(self, x):
            pass

    def fn(x):
        surrogate = (w * x).sum() * (1.0 if next(calls) % 2 else 2.0)
        value = (w * x).sum()
        return value.detach() + (surrogate - surrogate.detach())

    x = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="gradient of parameter 0"):
        TraceOnce(fn, (Program(),))(x)
    calls = itertools.count(1)
    with pytest.warns(JitFallbackWarning, match="gradient of parameter 0"):
        TraceOnce(fn, (Program(),), fallback=fn)(x)


def test_a_nan_loss_is_replayed_not_called_a_mismatch():
    # NaN in both the recording and eager is agreement: the step returns NaN, and fit's
    # divergence check (not a fallback warning) reports it.
    w = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    class Program(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = w

    def fn(x):
        return (w * x).sum()

    x = torch.tensor([1.0, float("nan")], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitFallbackWarning)
        recorder = TraceOnce(fn, (Program(),), fallback=fn)
        losses = [recorder(x) for _ in range(3)]
    assert recorder.eager_reason is None and all(bool(loss.isnan()) for loss in losses)


def test_fit_defaults_to_auto_and_records_the_zoo_vae(digits):
    assert ppl_vae.Compute().jit == "auto"  # fit's compute= group: the default
    x = digits.train[:96]
    model, guide = VAE(64, latent_dim=4, hidden=16), MLPEncoder(64, latent_dim=4, hidden=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitFallbackWarning)
        result = ppl_vae.fit(model, guide, x, epochs=2, batch_size=40, progress=False)
    recorder = _recorder(result.state)
    # Batches of 40, 40 and 16: two shapes recorded once each, no fallback (nothing is
    # compiled, so the last batch is not padded: ppl_vae.recording.padding).
    assert recorder.eager_reason is None and recorder.num_traces == 2
    assert result.settings["jit"] == "auto"


def test_estimators_without_a_recorded_variant_are_eager_under_auto():
    for name, spec in ppl_vae.estimators.registry.ESTIMATORS.items():
        elbo = make_elbo(name, jit="auto")
        assert isinstance(elbo, TracedELBO) == spec.has_jit, name
        if not spec.has_jit:
            with pytest.raises(ValueError, match="no jit='compile' variant"):
                make_elbo(name, jit="compile")


def test_jit_argument_is_checked():
    assert [check_jit(v) for v in (False, True, "auto", "compile", "true", "FALSE")] == [
        False, True, "auto", "compile", True, False]
    with pytest.raises(ValueError, match="jit must be one of"):
        make_elbo("mc", jit="fast")
    with pytest.raises(TypeError, match="jit must be one of"):
        make_elbo("mc", jit=1)


_NO_INDUCTOR = inductor_unavailable()


@pytest.mark.slow  # Inductor's first C++ build of even a tiny graph takes 5-15 s on 2 cores
@pytest.mark.skipif(_NO_INDUCTOR is not None, reason=str(_NO_INDUCTOR))
def test_compile_matches_eager_on_a_tiny_program():
    # Inductor compiles the recorded loss-and-gradient graph to C++; the random draws stay
    # torch's (fallback_random), so the trajectory is eager's up to rounding.
    from torch._dynamo.utils import counters

    counters.clear()
    data = _batches()
    state, compiled = _train(model, "compile", data, steps=4)
    # With torch's Adam on the CPU the step is fused (ppl_vae.recording.fused): its own recorder,
    # replayed as recorded for the two checked steps, then compiled with the optimizer.
    assert state.fused is not None and state.fused.eager_reason is None
    assert state.fused.recorder.num_traces == 1 and state.fused.compile_seconds > 0
    assert state.fused.num_compiled == 1
    # One graph: the fused step runs without autograd (with autograd on, dynamo would also
    # capture a grad mode of its own as a second graph); none through dynamo at all when
    # Inductor takes the recorded graph directly (ppl_vae.recording.fused._compile).
    # AOTAutograd's own count is not asserted: it differs with the state of Inductor's caches
    # (1 with a warm cache, 2 in a fresh clone).
    assert counters["stats"]["unique_graphs"] <= 1
    _, eager = _train(model, False, data, steps=4)
    torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("jit", ["auto", "compile"])
def test_recorded_and_compiled_steps_on_cuda(jit):
    torch.manual_seed(0)
    x = torch.rand(64, 64, device="cuda").round()
    net_model, net_guide = VAE(64, latent_dim=4, hidden=16), MLPEncoder(64, latent_dim=4, hidden=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitFallbackWarning)
        result = ppl_vae.fit(net_model, net_guide, x, epochs=3, batch_size=32, jit=jit,
                             progress=False)
    assert _recorder(result.state).eager_reason is None
    assert result.history["train_elbo"].notna().all()
