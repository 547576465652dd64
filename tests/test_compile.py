"""``TraceOnce`` / ``jit=True`` on programs that are not the zoo VAE."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import constraints

from ppl_vae.estimators.registry import make_elbo
from ppl_vae.recording.compile import TraceOnce
from ppl_vae.train.state import init_state, update


def model(x):
    # A global latent (outside the plate) and a pyro.param with a positivity constraint.
    noise = pyro.param("noise", torch.tensor(1.0, dtype=x.dtype), constraint=constraints.positive)
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), x.new_ones(()) * 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, noise), obs=x)


def guide(x):
    loc = pyro.param("mu_loc", torch.tensor(0.0, dtype=x.dtype))
    scale = pyro.param("mu_scale", torch.tensor(1.0, dtype=x.dtype), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def branchy_model(x):
    noise = pyro.param("noise", torch.tensor(1.0, dtype=x.dtype), constraint=constraints.positive)
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), x.new_ones(())))
    # Python branch on a tensor value: a recorded graph would freeze the first branch taken.
    shift = 5.0 if float(x.mean()) > 0 else -5.0
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu + shift, noise), obs=x)


def _trajectory(estimator, jit, data, dtype, steps=6):
    pyro.clear_param_store()
    elbo = make_elbo(estimator, jit=jit)
    state = init_state(model, guide, elbo, (data[0],), num_data=64)
    pyro.set_rng_seed(3)
    losses = []
    with pyro.validation_enabled(False):
        for i in range(steps):
            state, loss = update(state, (data[i % len(data)],))
            losses.append(loss)
    return torch.stack(losses), {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


@pytest.mark.parametrize("estimator", ["mc", "analytic", "enum"])
def test_jit_matches_eager_on_a_global_latent_model(estimator, dtype):
    g = torch.Generator().manual_seed(0)
    data = [(2.0 + torch.randn(16, generator=g)).to(dtype) for _ in range(4)]
    eager, eager_params = _trajectory(estimator, False, data, dtype)
    traced, traced_params = _trajectory(estimator, True, data, dtype)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5  # same ops, same random numbers
    torch.testing.assert_close(traced, eager, rtol=rtol, atol=0.0)
    for name in eager_params:
        torch.testing.assert_close(traced_params[name], eager_params[name], rtol=rtol, atol=1e-7)


def test_data_dependent_branch_is_refused():
    pyro.clear_param_store()
    elbo = make_elbo("mc", jit=True)
    pos, neg = torch.full((8,), 1.0), torch.full((8,), -1.0)
    state = init_state(branchy_model, guide, elbo, (pos,), num_data=8)
    with pyro.validation_enabled(False):
        state, _ = update(state, (pos,))
        with pytest.raises(ValueError, match="static structure"):
            update(state, (neg,))


def test_recordings_are_bounded_and_handlers_run_eagerly():
    pyro.clear_param_store()
    fn = lambda x: make_elbo("mc").differentiable_loss(model, guide, x)  # noqa: E731
    recorder = TraceOnce(fn, (model, guide), max_entries=3)
    with pyro.validation_enabled(False):
        for n in range(2, 10):  # eight shapes, at most three graphs kept
            recorder(torch.randn(n)).backward()
        assert recorder.num_traces == 8 and len(recorder._entries) == 3
        # Under a handler the program must run (the handler sees its sites), not the graph.
        with poutine.trace(param_only=True) as tr:
            recorder(torch.randn(9))
    assert {"noise", "mu_loc", "mu_scale"} <= set(tr.trace.nodes) and recorder.num_traces == 8


def test_gradient_reaches_every_parameter():
    pyro.clear_param_store()
    elbo = make_elbo("analytic", jit=True)
    x = torch.randn(12)
    loss_module = elbo(model, guide)
    with pyro.validation_enabled(False):
        for _ in range(3):  # record, checked replay, plain replay
            for p in pyro.get_param_store().values():
                p.unconstrained().grad = None
            loss_module(x).backward()
            grads = {k: v.unconstrained().grad for k, v in pyro.get_param_store().items()}
            assert set(grads) == {"noise", "mu_loc", "mu_scale"}
            assert all(g is not None and torch.isfinite(g).all() for g in grads.values())


def test_simplify_moves_negations_off_large_tensors():
    from torch.fx.experimental.proxy_tensor import make_fx

    from ppl_vae.recording.compile import simplify

    def f(logits, x, g):
        ll = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
        wide = -g.unsqueeze(-1).expand(logits.shape)  # a broadcast scalar per row, negated
        return ll.view(logits.shape).sum(-1), wide * logits

    args = (torch.randn(4, 5, dtype=torch.float64), torch.rand(4, 5, dtype=torch.float64),
            torch.randn(4, dtype=torch.float64))
    graph = make_fx(f)(*args)
    expected = graph(*args)
    rewrites = 0
    while step := simplify(graph.graph):
        rewrites += step
    graph.recompile()
    assert rewrites == 3  # the view dropped, sum(neg) and neg(expand) swapped
    negated = [n for n in graph.graph.nodes if n.target is torch.ops.aten.neg.default]
    assert all(tuple(n.meta["val"].shape) in {(4,), (4, 1)} for n in negated)
    for got, want in zip(graph(*args), expected, strict=True):
        assert torch.equal(got, want)  # exact: negation commutes with rounding


def test_backend_compiles_the_recorded_graph():
    pyro.clear_param_store()
    elbo = make_elbo("mc")
    fn = lambda x: elbo.differentiable_loss(model, guide, x)  # noqa: E731
    plain, compiled = TraceOnce(fn, (model, guide)), TraceOnce(fn, (model, guide), backend="eager")
    x = torch.randn(16)
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(4)
        want = [plain(x) for _ in range(3)]
        pyro.set_rng_seed(4)
        got = [compiled(x) for _ in range(3)]
    torch.testing.assert_close(torch.stack(got), torch.stack(want).detach())
    got[-1].backward()  # the compiled graph's gradients reach the parameters
    assert pyro.param("mu_loc").unconstrained().grad is not None


def _ops(graph, target):
    return [n for n in graph.graph.nodes if n.target is target]


def test_fold_constants_stores_what_only_the_signature_fixes():
    from torch.fx.experimental.proxy_tensor import make_fx

    from ppl_vae.recording.graph_rewrites import fold_constants, simplify

    aten = torch.ops.aten

    def f(x, w):
        # The standard-normal prior and the backward seed of a recorded Pyro step: tensors that
        # depend on x only through its shape and dtype; plus a random draw and uninitialised
        # memory filled in place, which must stay per call.
        zero, one = x.new_zeros(()).expand(x.shape), x.new_ones(()).expand(x.shape)
        seed = torch.ones_like(x.sum()).expand(x.shape) * 2.5
        noise = torch.empty(x.shape, dtype=x.dtype).normal_()
        return ((x - zero) / one * w + seed * x + noise).sum(), (seed + 1.0).neg()

    args = (torch.randn(3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64))
    graph = make_fx(f)(*args)
    torch.manual_seed(0)
    expected = graph(*args)
    folded = fold_constants(graph, args)
    while simplify(graph.graph):
        pass
    graph.graph.eliminate_dead_code()
    graph.recompile()
    assert folded >= 3
    for target in (aten.new_zeros.default, aten.new_ones.default, aten.ones_like.default,
                   aten.sub.Tensor, aten.div.Tensor):
        assert not _ops(graph, target), target  # folded, then x - 0 and x / 1 dropped
    assert len(_ops(graph, aten.normal_.default)) == 1 and _ops(graph, aten.empty.memory_format)
    torch.manual_seed(0)
    for got, want in zip(graph(*args), expected, strict=True):
        assert torch.equal(got, want)
    # Another x of the same signature: the folded tensors did not depend on its values.
    other = (torch.randn(3, 4, dtype=torch.float64), args[1])
    unfolded = make_fx(f)(*other)
    torch.manual_seed(1)
    want = unfolded(*other)
    torch.manual_seed(1)
    assert all(torch.equal(g, w) for g, w in zip(graph(*other), want, strict=True))


def test_merge_duplicates_merges_pure_ops_only():
    from torch.fx.experimental.proxy_tensor import make_fx

    from ppl_vae.recording.graph_rewrites import merge_duplicates

    def f(x):
        a, b = (x * 2.0).sum(), (x * 2.0).sum()  # Pyro scores a site twice: value, surrogate
        r1, r2 = torch.rand_like(x), torch.rand_like(x)  # two draws, never one
        return a + b, r1 - r2

    x = torch.randn(5, dtype=torch.float64)
    graph = make_fx(f)(x)
    torch.manual_seed(0)
    expected = graph(x)
    assert merge_duplicates(graph.graph) == 2  # the second mul and its sum
    graph.graph.eliminate_dead_code()
    graph.recompile()
    assert len(_ops(graph, torch.ops.aten.mul.Tensor)) == 1
    assert len([n for n in graph.graph.nodes if "rand" in str(n.target)]) == 2
    torch.manual_seed(0)
    got = graph(x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert not torch.equal(got[1], torch.zeros_like(got[1]))


def test_fold_constants_keeps_a_tensor_filled_in_place_per_call():
    from torch.fx.experimental.proxy_tensor import make_fx

    from ppl_vae.recording.graph_rewrites import fold_constants

    def f(x, label):
        # How Pyro's one-hot encodings are built: a fresh zeros tensor, scattered into in place.
        one_hot = x.new_zeros(x.shape).scatter_(-1, label.unsqueeze(-1), 1.0)
        return ((one_hot * 2.0).expand(2, *x.shape) * x).sum()

    x = torch.randn(3, 4, dtype=torch.float64)
    graph = make_fx(f)(x, torch.tensor([0, 1, 2]))
    fold_constants(graph, (x, torch.tensor([0, 1, 2])))
    graph.recompile()
    for label in ([3, 3, 0], [1, 2, 3]):  # other labels, call after call: the one-hot follows
        label = torch.tensor(label)
        assert torch.equal(graph(x, label), f(x, label))


def test_a_recorded_step_of_the_semi_supervised_vae_is_eagers():
    # The corpus' SS-VAE (one-hot labels, a discrete guide site) under jit=True: the recording
    # must match eager on every batch, and train as eager does.
    from programs import ssvae

    losses = {}
    for jit in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = ssvae.make(torch.float64)
        data = ssvae.data(torch.float64)
        elbo = make_elbo("mc", jit=jit, **getattr(ssvae, "ELBO_OPTIONS", {}))
        state = init_state(model, guide, elbo, data, num_data=data[0].shape[0])
        pyro.set_rng_seed(1)
        with pyro.validation_enabled(False):
            losses[jit] = torch.stack([update(state, data)[1] for _ in range(5)])
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-10, atol=0.0)

