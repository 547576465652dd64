"""The ragged last batch padded with rows of weight zero (``ppl_vae.recording.padding``): the
padded step is eager's step on the ragged batch, loss and every gradient, and a run records one
graph; padding is refused where rows are not independent terms of a sum."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae.estimators.registry import make_elbo
from ppl_vae.programs.handlers import ScaledProgram
from ppl_vae.recording.summary import step_summary
from ppl_vae.train.state import init_state, update

D, Z = 5, 16  # 16 latent dims: the ragged batch's draws are the first rows of the padded ones


class VAE(nn.Module):
    def __init__(self, sizeless=False, batch_norm=False):
        super().__init__()
        self.enc, self.dec = nn.Linear(D, 2 * Z), nn.Linear(Z, D)
        self.norm = nn.BatchNorm1d(D) if batch_norm else nn.Identity()
        self.sizeless = sizeless

    def plate(self, x):
        return pyro.plate("data") if self.sizeless else pyro.plate("data", x.shape[0])

    def model(self, x):
        pyro.module("vae", self)
        with self.plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("vae", self)
        with self.plate(x):
            h = self.enc(self.norm(x))
            pyro.sample("z", dist.Normal(h[..., :Z], h[..., Z:].exp()).to_event(1))


def test_the_default_step_is_not_padded(dtype):
    # jit="auto" (and jit=True) keep eager's sample path: a padded batch would draw for its
    # padding rows too. Its ragged batch replays a second recording.
    vae = VAE().to(dtype)
    x = torch.randn(21, D, dtype=dtype)
    for jit in ("auto", True):
        pyro.clear_param_store()
        state = init_state(vae.model, vae.guide, make_elbo("analytic", jit=jit), (x[:8],),
                           num_data=21, batch_size=8)
        assert state.padding is None and "replays as recorded" in state.padding_note


def _state(vae, estimator, x, batch_size, num_data):
    # pad=True: the padding jit="compile" applies, on the uncompiled recorded step (cheap).
    vae.to(x.dtype)
    return init_state(vae.model, vae.guide, make_elbo(estimator, jit=True), (x[:batch_size],),
                      num_data=num_data, batch_size=batch_size, pad=True)


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
@pytest.mark.parametrize("sizeless", [False, True], ids=["sized", "sizeless"])
def test_padded_step_is_the_eager_step_on_the_ragged_batch(estimator, sizeless, dtype):
    torch.manual_seed(0)
    vae = VAE(sizeless)
    x = torch.randn(21, D, dtype=dtype)
    state = _state(vae, estimator, x, 8, 21)
    assert state.padding is not None, state.padding_note
    ragged = x[16:]  # 5 rows padded to 8
    torch.manual_seed(3)
    loss = state.loss_fn(*state.padding((ragged,), state.params[0]))
    grads = torch.autograd.grad(loss, state.params)
    eager = make_elbo(estimator)(ScaledProgram(vae.model, 21, "data"),
                                 ScaledProgram(vae.guide, 21, "data"))
    torch.manual_seed(3)
    want = eager(ragged)
    want_grads = torch.autograd.grad(want, state.params)
    # The same terms and draws; only the summation order of a length-8 and a length-5 sum differ.
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    assert loss.dtype == dtype
    torch.testing.assert_close(loss, want, rtol=tol, atol=tol)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol * 10)


def test_padding_refused_for_a_batch_statistic():
    vae = VAE(batch_norm=True)  # a batch norm in the encoder: every row sees the padding rows
    state = _state(vae, "mc", torch.randn(21, D), 8, 21)
    assert state.padding is None
    assert "padding rows change" in state.padding_note


def test_padding_refused_for_enumeration_and_not_needed_without_a_ragged_batch():
    state = _state(VAE(), "mc", torch.randn(24, D), 8, 24)
    assert state.padding is None and state.padding_note.startswith("not needed")
    pyro.clear_param_store()
    vae = VAE().to(torch.float32)
    state = init_state(vae.model, vae.guide, make_elbo("enum", jit=True),
                       (torch.randn(8, D),), num_data=21, batch_size=8, pad=True)
    assert state.padding is None and "not a checked sum" in state.padding_note


def test_padding_refused_for_a_plate_that_subsamples():
    def model(x):
        loc = pyro.param("loc", torch.zeros(D))
        with pyro.plate("data", x.shape[0], subsample_size=4) as idx:
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x[idx])

    def guide(x):
        pass

    state = init_state(model, guide, make_elbo("mc", jit=True), (torch.randn(8, D),),
                       num_data=21, batch_size=8, pad=True)
    assert state.padding is None and "subsamples" in state.padding_note


def test_a_run_records_one_graph():
    torch.manual_seed(0)
    vae = VAE()
    x = torch.randn(21, D)
    state = _state(vae, "analytic", x, 8, 21)
    assert state.padding_note == "the last batch padded to 8 rows"
    losses = []
    for _ in range(2):  # two epochs: batches of 8, 8 and the ragged 5
        for start in (0, 8, 16):
            state, loss = update(state, (x[start:start + 8],))
            losses.append(float(loss))
    summary = step_summary(state.recorder, state.fused, state.padding_note)
    assert summary["graphs_recorded"] == 1, summary
    assert torch.isfinite(torch.tensor(losses)).all()
