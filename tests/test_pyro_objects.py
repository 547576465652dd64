"""Pyro's own objects in ``fit``: ``estimator=`` a ``pyro.infer`` ELBO, ``optimizer=`` a
``pyro.optim`` optimizer (ppl_vae/estimators/pyro_elbos.py, ppl_vae/train/optimizers.py).

A mapped ELBO must give the history of its registered name bit for bit (same seed, same draws);
a ``pyro.optim`` optimizer the parameter trajectory of Pyro's own ``SVI`` with it, step by step;
what cannot be honoured is refused before the first step, in one line naming it.
"""

import importlib

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from torch import nn

import ppl_vae
from ppl_vae.estimators.pyro_elbos import PYRO_ELBOS, PyroELBOMatch, resolve_estimator
from ppl_vae.estimators.registry import EstimatorSpec, register_estimator, unregister_estimator
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE

ROWS, OBS, LATENT = 48, 12, 2


def _vae_fit(estimator, dtype=torch.float64, **kwargs):
    pyro.clear_param_store()
    torch.manual_seed(3)  # the same initial weights in every run
    model = VAE(OBS, LATENT, hidden=8).to(dtype)
    guide = MLPEncoder(OBS, LATENT, hidden=8).to(dtype)
    x = (torch.rand(ROWS, OBS, generator=torch.Generator().manual_seed(0)) > 0.5).to(dtype)
    kwargs = {"jit": False, **kwargs}
    return ppl_vae.fit(model, guide, x, estimator=estimator, epochs=2, batch_size=16,
                       progress=False, **kwargs)


# (Pyro's ELBO, the registered name and fit options it must equal)
MAPPED = [
    (lambda: pyro.infer.Trace_ELBO(), "mc", {}),
    (lambda: pyro.infer.Trace_ELBO(num_particles=3, vectorize_particles=True,
                                   max_plate_nesting=1),
     "mc", {"num_particles": 3, "vectorize_particles": True,
            "elbo_options": {"max_plate_nesting": 1}}),
    (lambda: pyro.infer.TraceMeanField_ELBO(num_particles=2), "analytic", {"num_particles": 2}),
    (lambda: pyro.infer.TraceEnum_ELBO(max_plate_nesting=1), "enum",
     {"elbo_options": {"max_plate_nesting": 1}}),
    (lambda: pyro.infer.TraceGraph_ELBO(), "tracegraph", {}),
    (lambda: pyro.infer.RenyiELBO(alpha=0, num_particles=3, vectorize_particles=True), "iwae",
     {"num_particles": 3, "vectorize_particles": True}),
]


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
@pytest.mark.parametrize("make, name, options", MAPPED,
                         ids=[f"{m[1]}-{i}" for i, m in enumerate(MAPPED)])
def test_a_mapped_elbo_gives_the_history_of_its_name(make, name, options):
    ours = _vae_fit(make())
    ref = _vae_fit(name, **options)
    assert ours.settings["estimator"] == name
    assert ours.settings["pyro_elbo"].startswith("pyro.infer.")
    for key in ("num_particles", "vectorize_particles", "elbo_options", "jit"):
        assert ours.settings[key] == ref.settings[key], key
    pd.testing.assert_series_equal(ours.history["train_elbo"], ref.history["train_elbo"])


def test_the_mapped_history_differs_from_another_estimator():
    # The equality above can fail: another estimator, same seed, another history.
    ours = _vae_fit(pyro.infer.Trace_ELBO())
    other = _vae_fit("analytic")
    assert not np.allclose(ours.history["train_elbo"], other.history["train_elbo"])


def test_a_jit_elbo_turns_the_recorded_step_on_float32():
    ours = _vae_fit(pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True), dtype=torch.float32,
                    jit="auto")
    ref = _vae_fit("mc", dtype=torch.float32, jit=True)
    assert ours.settings["jit"] is True and ours.settings["estimator"] == "mc"
    np.testing.assert_allclose(ours.history["train_elbo"], ref.history["train_elbo"], rtol=1e-6)


class MySurrogateELBO(pyro.infer.Trace_ELBO):
    """A user's subclass: not mapped (it may compute something else), used as given."""

    calls = 0

    def differentiable_loss(self, model, guide, *args, **kwargs):
        MySurrogateELBO.calls += 1
        return super().differentiable_loss(model, guide, *args, **kwargs)


def test_an_unmapped_subclass_trains_as_given_with_its_plan():
    MySurrogateELBO.calls = 0
    result = _vae_fit(MySurrogateELBO(num_particles=2))
    assert MySurrogateELBO.calls > 2 * ROWS // 16  # its own loss was the training loss
    assert result.settings["estimator"] == "MySurrogateELBO"
    assert "MySurrogateELBO(num_particles=2)" in result.settings["pyro_elbo"]
    assert np.isfinite(result.history["train_elbo"]).all()
    x = torch.rand(4, OBS, dtype=torch.float64)
    plan = ppl_vae.explain(VAE(OBS, LATENT).double(), MLPEncoder(OBS, LATENT).double(), x,
                           MySurrogateELBO())
    assert plan["term"].tolist() == ["Monte Carlo KL"]  # Trace_ELBO's plan, its nearest class


def test_an_unmapped_subclass_keeps_the_preflight_of_its_class():
    class MyMeanField(pyro.infer.TraceMeanField_ELBO):
        pass

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(p))

    x = torch.randn(8)
    with pytest.raises(ValueError, match="rsample"):  # the analytic estimator's refusal
        ppl_vae.fit(model, guide, x, estimator=MyMeanField(), epochs=1, batch_size=8,
                    progress=False, jit=False)
    # A subclass of Trace_ELBO takes the same programs (its class's pre-flight passes them).
    ppl_vae.fit(model, guide, x, estimator=MySurrogateELBO(), epochs=1, batch_size=8,
                progress=False, jit=False)


@pytest.mark.parametrize("estimator, kwargs, match", [
    (pyro.infer.Trace_ELBO, {}, "pass Trace_ELBO()"),
    (object(), {}, r"a registered name\) or a pyro.infer.ELBO"),
    (pyro.infer.RenyiELBO(alpha=0.5), {}, "no differentiable_loss"),
    (pyro.infer.TraceTailAdaptive_ELBO(num_particles=2, vectorize_particles=True), {},
     "returns inf"),
    (pyro.infer.Trace_ELBO(num_particles=2), {"num_particles": 4}, "num_particles=4"),
    (pyro.infer.Trace_ELBO(), {"vectorize_particles": True}, "vectorize_particles=True"),
    (pyro.infer.Trace_ELBO(), {"elbo_options": {"max_plate_nesting": 1}}, "elbo_options"),
    (pyro.infer.JitTrace_ELBO(), {"jit": False}, "jit=False refuses"),
    (pyro.infer.JitTraceGraph_ELBO(), {}, "no recorded variant"),
    (pyro.infer.JitTrace_ELBO(jit_options={"check_trace": False}), {}, "jit_options"),
    (MySurrogateELBO(), {"jit": True}, "used as given is not recorded"),
], ids=["class", "object", "renyi-alpha", "tail-adaptive", "particles", "vectorize",
        "elbo-options", "jit-off", "jit-tracegraph", "jit-options", "as-given-jit"])
def test_what_cannot_be_honoured_is_refused_before_anything_runs(estimator, kwargs, match):
    ran = []
    with pytest.raises((TypeError, ValueError), match=match) as info:
        _vae_fit(estimator, **{"jit": "auto", **kwargs}, callbacks=[lambda r, s: ran.append(r)])
    assert "\n" not in str(info.value) and ran == []


def test_an_option_the_estimator_ignores_is_refused(monkeypatch):
    # A registered estimator whose builder drops max_plate_nesting, and a class mapped to it.
    def build(*, num_particles, vectorize_particles, jit, **options):
        return pyro.infer.Trace_ELBO(num_particles=num_particles)

    class Toy(pyro.infer.Trace_ELBO):
        pass

    register_estimator("toy_drops", EstimatorSpec(build, "drops options"))
    monkeypatch.setitem(PYRO_ELBOS, Toy, PyroELBOMatch("toy_drops"))
    try:
        assert resolve_estimator(Toy()).estimator == "toy_drops"  # nothing to drop: mapped
        with pytest.raises(ValueError, match="cannot honour max_plate_nesting=2"):
            resolve_estimator(Toy(max_plate_nesting=2))
    finally:
        unregister_estimator("toy_drops")


# --- optimizers: the trajectory of Pyro's own SVI with the same optimizer --------------------

def _programs(dtype):
    """A decoder module, a global pyro.param and a point-mass guide: the loss is deterministic,
    so fit and SVI see the same gradients and their trajectories can be compared exactly."""
    torch.manual_seed(0)
    net = nn.Linear(3, 2).to(dtype)

    def model(x):
        pyro.module("decoder", net)
        shift = pyro.param("shift", torch.zeros(2, dtype=dtype))
        w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=dtype), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(net(x[:, :3]) + shift + w, 0.3).to_event(1),
                        obs=x[:, 3:])

    def guide(x):
        w_map = pyro.param("w_map", torch.full((2,), 0.5, dtype=dtype))
        pyro.sample("w", dist.Delta(w_map, event_dim=1))

    return model, guide


def _data(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = 4.0 * x[:, :2] + 3.0 + 0.3 * torch.randn(20, 2, generator=g, dtype=torch.float64)
    return torch.cat([x, y], 1).to(dtype)


STEPS = 6


def _names():
    return sorted(pyro.get_param_store().keys())


def _pyro_trajectory(make_optim, dtype):
    pyro.clear_param_store()
    model, guide = _programs(dtype)
    svi = pyro.infer.SVI(model, guide, make_optim(), pyro.infer.Trace_ELBO())
    out = []
    for _ in range(STEPS):
        svi.step(_data(dtype))
        out.append({n: pyro.param(n).detach().clone() for n in _names()})
    return out


def _fit_trajectory(make_optim, dtype, **kwargs):
    pyro.clear_param_store()
    model, guide = _programs(dtype)
    out = []

    def record(row, state):
        out.append({n: pyro.param(n).detach().clone() for n in _names()})

    ppl_vae.fit(model, guide, _data(dtype), estimator="mc", epochs=STEPS, batch_size=20,
                optimizer=make_optim(), jit=False, progress=False, callbacks=[record], **kwargs)
    return out


OPTIMS = {
    "adam": lambda: pyro.optim.Adam({"lr": 0.05, "betas": (0.8, 0.99)}),
    "clipped": lambda: pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 0.5, "lrd": 0.8}),
    "per-param": lambda: pyro.optim.ClippedAdam(
        lambda module_name, param_name: {"lr": 0.1 if module_name == "decoder" else 0.02,
                                         "clip_norm": 2.0 if param_name == "weight" else 0.3}),
    "per-param-name": lambda: pyro.optim.Adam(
        lambda name: {"lr": 0.08 if name.startswith("decoder") else 0.01}),
    "sgd": lambda: pyro.optim.SGD({"lr": 1e-3, "momentum": 0.5}),
}


@pytest.mark.parametrize("name", list(OPTIMS))
def test_a_pyro_optimizer_follows_pyros_svi(name, dtype):
    ours = _fit_trajectory(OPTIMS[name], dtype)
    theirs = _pyro_trajectory(OPTIMS[name], dtype)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert len(ours) == len(theirs) == STEPS
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol,
                                       msg=f"{key} at step {step + 1}")


def test_the_trajectory_check_sees_a_wrong_translation():
    # ClippedAdam's clipping and decay matter here: plain Adam leaves Pyro's trajectory.
    ours = _fit_trajectory(lambda: pyro.optim.Adam({"lr": 0.05}), torch.float64)
    theirs = _pyro_trajectory(OPTIMS["clipped"], torch.float64)
    assert not torch.allclose(ours[-1]["w_map"], theirs[-1]["w_map"], atol=1e-4)


def test_the_optimizer_lr_rule():
    # The optimizer's own lr wins; fit's lr fills in where its options name none.
    seen = []

    def lrs(row, state):
        seen.append([g["lr"] for g in state.optimizer.param_groups])

    for optim, kwargs, want in ((pyro.optim.Adam({"lr": 0.02}), {}, 0.02),
                                (pyro.optim.Adam({"lr": 0.02}), {"lr": 0.02}, 0.02),
                                (pyro.optim.Adam({"betas": (0.9, 0.99)}), {"lr": 0.05}, 0.05)):
        seen.clear()
        pyro.clear_param_store()
        model, guide = _programs(torch.float64)
        result = ppl_vae.fit(model, guide, _data(torch.float64), epochs=1, batch_size=20,
                             optimizer=optim, jit=False, progress=False, callbacks=[lrs],
                             **kwargs)
        assert seen == [[want]]
        assert result.settings["optimizer"].startswith("pyro.optim.Adam({")
        assert result.settings["lr"] == want


@pytest.mark.parametrize("make, kwargs, match", [
    (lambda: pyro.optim.Adam({"lr": 0.02}), {"lr": 0.5}, "optimizer's own lr wins"),
    (lambda: pyro.optim.Adam(lambda m, p: {"lr": 0.02}), {"lr": 0.5}, "optimizer's own lr wins"),
    (lambda: pyro.optim.Adam({"lr": 0.02}, {"clip_norm": 1.0}), {}, "clip_args"),
    (lambda: pyro.optim.ExponentialLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1},
                                       "gamma": 0.9}), {}, "scheduler"),
    (lambda: pyro.optim.ClippedAdam({"lr": 0.01, "clip": 3}), {}, r"\['clip'\]"),
    (lambda: pyro.optim.Adam(lambda m, p: {"lr": 0.01, "bogus": 1}), {},
     r"\['bogus'\].*returned for parameter"),
    (lambda: pyro.optim.PyroOptim(torch.optim.LBFGS, {"lr": 0.1}), {}, "closure"),
    (lambda: torch.optim.LBFGS, {}, "closure"),
    (lambda: pyro.optim.Adam({"lr": -1.0}), {}, "pyro.optim.Adam: Invalid learning rate"),
], ids=["lr-both", "lr-both-callable", "clip-args", "scheduler", "unknown-key",
        "callable-unknown-key", "lbfgs", "torch-lbfgs", "bad-value"])
def test_a_pyro_optimizer_is_checked_before_the_first_step(make, kwargs, match):
    model, guide = _programs(torch.float64)
    ran = []
    with pytest.raises((TypeError, ValueError), match=match) as info:
        ppl_vae.fit(model, guide, _data(torch.float64), epochs=1, batch_size=20,
                    optimizer=make(), jit=False, progress=False,
                    callbacks=[lambda r, s: ran.append(r)], **kwargs)
    assert "\n" not in str(info.value) and ran == []


class PlainModel(nn.Module):
    """A torch.nn.Module model that never calls pyro.module: fit trains its parameters, which
    Pyro's param store does not hold."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2).double()

    def forward(self, x):
        w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(self.lin(x[:, :3]) + w, 0.3).to_event(1), obs=x[:, 3:])


def test_per_parameter_options_need_pyro_param_names():
    _, guide = _programs(torch.float64)
    x = _data(torch.float64)
    fit = dict(epochs=1, batch_size=20, progress=False, jit=False)
    ppl_vae.fit(PlainModel(), guide, x, optimizer=pyro.optim.Adam({"lr": 0.01}), **fit)
    with pytest.raises(ValueError, match="not in Pyro's param store"):
        ppl_vae.fit(PlainModel(), guide, x, optimizer=pyro.optim.Adam(lambda m, p: {"lr": 0.01}),
                    **fit)


# --- the corpus programs with Pyro's own ELBO --------------------------------------------------

PROGRAMS = ["vae_soft", "ssvae", "dmm", "bayes_regression", "subsampled", "prodlda", "gmm",
            "scanvi", "scvi_plate", "air_like", "cvae"]


def _pyro_class(name):
    """Pyro's eager ELBO class mapped to a registered name (None: none is)."""
    return next((cls for cls, match in PYRO_ELBOS.items()
                 if match.estimator == name and not match.jit and not match.consumes), None)


@pytest.mark.filterwarnings("ignore:.*enumerate sites")
@pytest.mark.parametrize("program", PROGRAMS)
def test_corpus_programs_train_with_pyros_elbo_as_with_its_name(program):
    module = importlib.import_module(f"programs.{program}")
    name = next(n for n in module.ESTIMATORS if _pyro_class(n) is not None)
    runs = []
    for estimator, options in ((_pyro_class(name)(**module.ELBO_OPTIONS), {}),
                               (name, {"elbo_options": module.ELBO_OPTIONS})):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = module.make(torch.float64)
        runs.append(ppl_vae.fit(model, guide, module.data(torch.float64), estimator=estimator,
                                epochs=1, batch_size=10, progress=False, jit=False, **options))
    assert runs[0].settings["estimator"] == name
    pd.testing.assert_series_equal(runs[0].history["train_elbo"], runs[1].history["train_elbo"])
