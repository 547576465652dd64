"""``jit="compile"`` with Adam on the CPU: loss, gradient and optimizer step as one compiled
graph (``ppl_vae.recording.fused``), the same trajectory as the unfused step."""

import copy
import functools
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.distributions import constraints

import ppl_vae.recording.fused as fused_module
from ppl_vae.estimators.registry import make_elbo
from ppl_vae.recording.compile import JitFallbackWarning, inductor_unavailable
from ppl_vae.recording.fused import fusable
from ppl_vae.train.state import init_state, update

_NO_INDUCTOR = inductor_unavailable()


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 3)


DECODER = Decoder()


def model(x):
    # A scalar pyro.param beside a module's weights: Inductor drops the in-place update of a
    # 0-dim input the graph also reads (the fused step works around it; this checks it does).
    pyro.module("decoder", DECODER)
    noise = pyro.param("noise", x.new_tensor(1.0), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), x.new_ones(2)).to_event(1))
        pyro.sample("x", dist.Normal(DECODER.net(z), noise).to_event(1), obs=x)


def guide(x):
    loc = pyro.param("loc", x.new_zeros(2))
    scale = pyro.param("scale", x.new_ones(2), constraint=constraints.positive)
    pyro.param("unused", x.new_tensor(3.0))  # read, never used: no gradient, never updated
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def _data(dtype, n=4):
    g = torch.Generator().manual_seed(0)
    return [(1.0 + torch.randn(8, 3, generator=g)).to(dtype) for _ in range(n)]


def _train(jit, data, optimizer="adam", steps=6, lr_change_at=4, reload_at=5):
    pyro.clear_param_store()
    torch.manual_seed(1)
    DECODER.to(data[0].dtype).net.reset_parameters()
    state = init_state(model, guide, make_elbo("mc", jit=jit), (data[0],), num_data=32,
                       optimizer=optimizer, lr=0.05)
    pyro.set_rng_seed(3)
    with pyro.validation_enabled(False):
        for i in range(steps):
            if i == lr_change_at:  # as a schedule does: the fused step must follow, not recompile
                state.optimizer.param_groups[0]["lr"] *= 0.5
            if i == reload_at:  # as a resume does: new state tensors, which the step must use
                state.optimizer.load_state_dict(copy.deepcopy(state.optimizer.state_dict()))
            state, _ = update(state, (data[i % len(data)],))
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    params.update({k: v.detach().clone() for k, v in DECODER.named_parameters()})
    return state, params


def test_fusable_says_why_not():
    p = [torch.zeros(2, requires_grad=True)]
    assert fusable(torch.optim.Adam(p, lr=0.1), p) is None
    assert fusable(torch.optim.AdamW(p, lr=0.1), p) is None
    assert "SGD" in fusable(torch.optim.SGD(p, lr=0.1), p)

    class MyAdam(torch.optim.Adam):  # may step differently: not replaced by the fused update
        pass

    assert "MyAdam" in fusable(MyAdam(p, lr=0.1), p)
    assert "amsgrad" in fusable(torch.optim.Adam(p, lr=0.1, amsgrad=True), p)
    q = [torch.zeros(1, requires_grad=True)]
    two = torch.optim.Adam([{"params": p}, {"params": q}], lr=0.1)
    assert "group" in fusable(two, p + q)


def test_only_compile_mode_fuses():
    data = _data(torch.float64)
    for jit in (False, True, "auto"):
        state, _ = _train(jit, data, steps=0)
        assert state.fused is None


OPTIMIZERS = {"adam": "adam",
              "adamw": functools.partial(torch.optim.AdamW, weight_decay=0.1)}


@pytest.mark.slow  # three Inductor builds of a tiny graph, about 5 s each on one core
@pytest.mark.skipif(_NO_INDUCTOR is not None, reason=str(_NO_INDUCTOR))
@pytest.mark.parametrize("optimizer,dtype", [("adam", torch.float32), ("adam", torch.float64),
                                             ("adamw", torch.float64)])
def test_fused_step_follows_the_unfused_trajectory(optimizer, dtype):
    data = _data(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitFallbackWarning)
        state, fused = _train("compile", data, OPTIMIZERS[optimizer])
    assert state.fused is not None and state.fused.eager_reason is None
    assert state.fused.num_compiled == 1  # the learning-rate change did not recompile
    # jit=True: the same recorded graph and random numbers, then torch's own optimizer step.
    reference_state, reference = _train(True, data, OPTIMIZERS[optimizer])
    assert reference_state.fused is None
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {}
    for name, value in reference.items():
        assert value.dtype == dtype
        torch.testing.assert_close(fused[name], value, **tol, msg=name)
    assert fused["unused"].item() == 3.0
    # The optimizer's state is torch's: the same moments and a step count of 6 for every
    # trained tensor, so checkpoints and resumes see what an unfused run would have written.
    ours, theirs = state.optimizer.state_dict(), reference_state.optimizer.state_dict()
    updated = [k for k, v in theirs["state"].items() if v]
    assert updated and all(float(ours["state"][k]["step"]) == 6 for k in updated)
    for k in updated:
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours["state"][k][moment], theirs["state"][k][moment], **tol)


@pytest.mark.slow
@pytest.mark.skipif(_NO_INDUCTOR is not None, reason=str(_NO_INDUCTOR))
def test_without_inductors_direct_entry_the_step_goes_through_torch_compile(monkeypatch):
    def unavailable(*args):
        raise ImportError("compile_fx moved")

    monkeypatch.setattr(fused_module, "_compile_direct", unavailable)
    data = _data(torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitFallbackWarning)
        state, fused = _train("compile", data)
    assert state.fused.eager_reason is None and state.fused.num_compiled == 1
    _, reference = _train(True, data)
    for name, value in reference.items():
        torch.testing.assert_close(fused[name], value, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.slow
@pytest.mark.skipif(_NO_INDUCTOR is not None, reason=str(_NO_INDUCTOR))
def test_a_scalar_param_given_new_storage_keeps_training():
    # p.data = ... swaps a 0-dim leaf's storage under the step's cached view of it.
    data = _data(torch.float64)
    state, _ = _train("compile", data, steps=5)
    noise = pyro.get_param_store().get_param("noise").unconstrained()
    with torch.no_grad():
        noise.data = noise.detach().clone()
    before = noise.detach().clone()
    with pyro.validation_enabled(False):
        update(state, (data[1],))
    assert state.fused.eager_reason is None and not torch.equal(noise.detach(), before)


def test_a_failed_fused_step_warns_and_trains_unfused(monkeypatch):
    def broken(*args):
        raise RuntimeError("no compiler today")

    monkeypatch.setattr(fused_module, "_build", broken)
    data = _data(torch.float64)
    with pytest.warns(JitFallbackWarning, match="fused step failed.*no compiler today"):
        state, got = _train("compile", data)
    assert "no compiler today" in state.fused.eager_reason and state.fused.num_compiled == 0
    _, want = _train(True, data)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=0.0)


def test_a_wrong_fused_update_is_caught_and_undone(monkeypatch):
    # A "compiled" step that moves every parameter and moment by 1: the first fused
    # step's check against torch's Adam catches it, restores parameters and state, and the run
    # continues unfused on exactly the unfused trajectory.
    def wrong(graph, trained, shapes, group, inputs):
        def step(leaves, tensors, exp_avgs, exp_avg_sqs, steps, coefficients):
            loss = graph(fused_module._graph_leaves(leaves, shapes), tensors)[0]
            for t in leaves + exp_avgs + exp_avg_sqs:
                t.add_(1.0)
            return [loss]
        return step

    monkeypatch.setattr(fused_module, "_build", wrong)
    data = _data(torch.float64)
    with pytest.warns(JitFallbackWarning, match="differs from torch's Adam"):
        state, got = _train("compile", data)
    reference_state, want = _train(True, data)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=0.0)
    ours, theirs = state.optimizer.state_dict(), reference_state.optimizer.state_dict()
    for k, v in theirs["state"].items():
        for key, value in v.items():
            torch.testing.assert_close(ours["state"][k][key], value, rtol=1e-12, atol=0.0)
