"""Real Pyro programs (``tests/programs/``) through fit, evaluate, to_arviz, diagnose and report.

For each program and each estimator that applies: a few training steps, then

- the scale of every site in training: N / B (times Pyro's own subsampling factor) inside the
  data plate, which ppl-vae must find by itself, 1 for globals;
- the training objective against plain Pyro's counterpart ELBO object, same parameters and
  seed, on the whole data set (where N / B = 1): equal to float tolerance.

For each program once: ``evaluate``'s ELBO against Pyro's ``Trace_ELBO`` to Monte Carlo error,
and finite diagnostics from ``to_arviz``, ``diagnose`` and ``report``.
"""

import importlib
import math

import numpy as np
import pyro
import pytest
import torch
from programs import COUNTERPART
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.util import site_is_subsample

import ppl_vae
from ppl_vae.programs.handlers import ScaledProgram

# How each program is walked over is its analysis' (programs.analysis): draws that do not
# vectorize are drawn one by one (cvae), a plate subsampled by the model (subsampled) or by
# the guide and replayed by the model (air_like) gets all rows and fixed indices, scvi-tools'
# plate (scvi_plate) its chunk's rows, an enumerated model site (gmm) is summed out. Pending:
PENDING_EVALUATE: dict[str, str] = {}
PENDING_DIAGNOSE: dict[str, str] = {}
# The ELBO evaluate must agree with, where Trace_ELBO is not it: a site enumerated in the model
# is summed out (Trace_ELBO would draw it from the prior and count log p(a) without its q).
REFERENCE = {"gmm": TraceEnum_ELBO}
# Guides that are point masses (AutoDelta of the globals, the assignment summed out): every
# draw is the same, so the importance weights are equal.
POINT_MASS = {"gmm"}

PROGRAMS = ["vae_soft", "ssvae", "dmm", "bayes_regression:diagonal", "bayes_regression:low_rank",
            "subsampled", "prodlda", "gmm", "scanvi", "scvi_plate", "air_like", "cvae"]
BATCH = 10


def load(program, dtype=torch.float32):
    name, _, variant = program.partition(":")
    module = importlib.import_module(f"programs.{name}")
    model, guide = module.make(dtype, variant) if variant else module.make(dtype)
    return module, model, guide, module.data(dtype)


def _cases():
    for program in PROGRAMS:
        module = importlib.import_module(f"programs.{program.partition(':')[0]}")
        for estimator in module.ESTIMATORS:
            yield program, estimator


def _dtype_cases():
    """Every pair in float32, and each program's first estimator in float64 as well."""
    for program, estimator in _cases():
        yield pytest.param(program, estimator, torch.float32, id=f"{program}-{estimator}")
    for program in PROGRAMS:
        module = importlib.import_module(f"programs.{program.partition(':')[0]}")
        yield pytest.param(program, module.ESTIMATORS[0], torch.float64,
                           id=f"{program}-{module.ESTIMATORS[0]}-float64")


def _fit(module, model, guide, data, estimator, **kwargs):
    return ppl_vae.fit(model, guide, data, estimator=estimator, epochs=2, batch_size=BATCH,
                       progress=False, elbo_options=module.ELBO_OPTIONS, **kwargs)


def _in_plate(site, plate):
    return any(f.name == plate for f in site["cond_indep_stack"])


# ssvae's guide marks its label for enumeration; mc and score draw it, as Pyro warns.
@pytest.mark.filterwarnings("ignore:.*enumerate sites")
@pytest.mark.parametrize("program, estimator, dtype", list(_dtype_cases()))
def test_program_trains_with_pyro_scales_and_pyro_elbo(program, estimator, dtype):
    module, model, guide, data = load(program, dtype)
    n = data[0].shape[0]
    result = _fit(module, model, guide, data, estimator)
    assert np.isfinite(result.history["train_elbo"]).all()
    assert result.settings["data_plate"] == module.DATA_PLATE  # found, not assumed
    assert result.settings["dtype"] == str(dtype).replace("torch.", "")

    # Scales in training: the programs the loss function runs, on a batch of B rows.
    scaled_model, scaled_guide = result.state.loss_fn.model, result.state.loss_fn.guide
    batch = tuple(t[:BATCH] for t in data)
    if result.state.padding is not None:  # one graph per run: the programs take row weights too
        batch = result.state.padding.pad(batch, result.state.params[0])
    with torch.no_grad(), pyro.validation_enabled(False):
        guide_trace = poutine.trace(scaled_guide).get_trace(*batch)
        model_trace = poutine.trace(poutine.replay(scaled_model, guide_trace)).get_trace(*batch)
    seen_local = 0
    for trace in (model_trace, guide_trace):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            local = _in_plate(site, module.DATA_PLATE)
            seen_local += local
            want = module.local_scale(n, BATCH) if local else 1.0
            scale = torch.as_tensor(site["scale"]).double()  # per-row weights when padded
            assert scale.numpy() == pytest.approx(want, rel=1e-6), name
    assert seen_local > 0

    # The objective against plain Pyro on all N rows (scale 1), same parameters and seed.
    plate = result.settings["data_plate"]
    ours_elbo = ppl_vae.make_elbo(estimator, **module.ELBO_OPTIONS)
    pyro.set_rng_seed(11)
    ours = ours_elbo.loss(ScaledProgram(model, n, plate), ScaledProgram(guide, n, plate), *data)
    pyro.set_rng_seed(11)
    ref = COUNTERPART[estimator](**module.ELBO_OPTIONS).loss(model, guide, *data)
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-4)


def _pyro_elbo_draws(program, model, guide, data, num, options):
    """Per-point ELBO of ``num`` independent single draws of Pyro's ELBO, with the programs'
    network in eval mode (dropout off) as evaluate runs it."""
    elbo = REFERENCE.get(program, Trace_ELBO)(**options)
    n = data[0].shape[0]
    owner = getattr(model, "__self__", None)  # ProdLDA's and scANVI's programs are methods
    was = owner.training if isinstance(owner, torch.nn.Module) else None
    if was is not None:
        owner.eval()
    try:
        with pyro.validation_enabled(False):
            return np.array([-elbo.loss(model, guide, *data) / n for _ in range(num)])
    finally:
        if was is not None:
            owner.train(was)


def _pending(cases, pending):
    """Mark the cases of programs that depend on pending work."""
    for case in cases:
        program = case[0] if isinstance(case, tuple) else case
        marks = pytest.mark.xfail(strict=True, reason=pending[program]) if program in pending else ()
        yield pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=marks)


@pytest.mark.filterwarnings("ignore:.*enumerate sites")
@pytest.mark.parametrize("program, estimator", list(_pending(_cases(), PENDING_EVALUATE)))
def test_program_evaluates_to_pyros_elbo_and_exports(program, estimator):
    module, model, guide, data = load(program)
    result = _fit(module, model, guide, data, estimator)
    num = 200
    evaluation = ppl_vae.evaluate(model, guide, data, num_samples=num)
    assert all(math.isfinite(v) for v in evaluation.values())
    # The same ELBO as plain Pyro's, to Monte Carlo error: evaluate's K draws and Pyro's M
    # draws are independent, each per-draw value with standard deviation sd.
    pyro.set_rng_seed(5)
    draws = _pyro_elbo_draws(program, model, guide, data, num, module.ELBO_OPTIONS)
    se = draws.std(ddof=1) * math.sqrt(1 / num + 1 / num)
    assert abs(evaluation["elbo"] - draws.mean()) < 4 * se + 1e-6

    tree = ppl_vae.to_arviz(result=result, data=data, num_draws=30)
    assert tree.attrs["data_plate"] == module.DATA_PLATE
    for var in tree["log_likelihood"].data_vars:
        assert np.isfinite(tree["log_likelihood"][var].values).all()
    assert np.isfinite(tree["sample_stats"]["log_p"].values).all()


@pytest.mark.filterwarnings("ignore:.*enumerate sites")
@pytest.mark.parametrize("program", list(_pending(PROGRAMS, PENDING_DIAGNOSE)))
def test_program_diagnoses_and_reports(program, tmp_path):
    module, model, guide, data = load(program)
    result = _fit(module, model, guide, data, module.ESTIMATORS[0])
    diagnostics = ppl_vae.diagnose(result=result, data=data, num_draws=30, gap_points=3, gap_steps=3,
                                   sbc_draws=9)
    assert diagnostics.tree.attrs["data_plate"] == module.DATA_PLATE
    k_hat = diagnostics.pointwise["k_hat"].to_numpy()
    if program in POINT_MASS:  # equal importance weights: no tail to fit
        assert (k_hat == -np.inf).all()
    else:
        assert np.isfinite(k_hat).all()
    assert np.isfinite(diagnostics.pointwise["elbo"]).all()
    assert set(diagnostics.checks["status"]) <= {"ok", "warning", "failing"}
    out = ppl_vae.report(result=result, data=data, diagnostics=diagnostics,
                         out=tmp_path / "report.html")
    assert "Pareto" in out.read_text()
