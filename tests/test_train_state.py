"""``update`` is state in, state out: the state it is given is never changed."""

from __future__ import annotations

import dataclasses

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vae
from ppl_vae.train.state import init_state, update


def model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), x.new_tensor(10.0)))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def guide(x):
    loc = pyro.param("loc", lambda: x.new_tensor(0.0))
    scale = pyro.param("scale", lambda: x.new_tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def _state(dtype):
    x = 2.0 + torch.randn(20, dtype=dtype)
    return init_state(model, guide, ppl_vae.make_elbo("analytic"), (x,), num_data=20), x


def test_update_returns_a_new_state_and_leaves_the_old_one(dtype):
    state, x = _state(dtype)
    before = [p.detach().clone() for p in state.params]
    new, loss = update(state, (x,))
    assert new is not state and state.step == 0 and new.step == 1
    assert loss.dim() == 0 and loss.dtype == dtype and not loss.requires_grad
    # The documented side effect: the optimizer stepped the shared parameter tensors.
    assert new.params is state.params and new.optimizer is state.optimizer
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, new.params, strict=True))
    newer, _ = update(new, (x,))
    assert (state.step, new.step, newer.step) == (0, 1, 2)


def test_the_state_cannot_be_changed():
    state, _ = _state(torch.float64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.step = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.optimizer = None


def test_fit_returns_the_state_after_its_last_step(dtype):
    x = 2.0 + torch.randn(30, dtype=dtype)
    result = ppl_vae.fit(model, guide, x, epochs=3, batch_size=10, progress=False)
    assert result.state.step == 3 * 3 == int(result.history["steps"].sum())
