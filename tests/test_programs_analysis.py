"""``ProgramAnalysis``: one case per way a data plate gets its size and per recorded field, on
plain Pyro programs (float32 and float64)."""

import importlib

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from ppl_vae.programs.analysis import PROBE_ROWS, analyze_programs, clear_cache

DTYPES = [torch.float32, torch.float64]
N = 12


def _x(dtype, n=N, d=3):
    return (torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=dtype),)


def _corpus(name, dtype):
    module = importlib.import_module(f"programs.{name}")
    model, guide = module.make(dtype)
    return model, guide, module.data(dtype)


def _plain(plate_kwargs=None, sizeless=False):
    """A local-latent pair: z per point inside the data plate, a global mu."""
    def plate(x):
        return pyro.plate("data") if sizeless else pyro.plate("data", x.shape[0],
                                                              **(plate_kwargs or {}))

    def model(x):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
        with plate(x):
            z = pyro.sample("z", dist.Normal(mu + x.new_zeros(x.shape[0]), 1.0))
            loc = z.unsqueeze(-1).expand(*z.shape, x.shape[-1])
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("mu_loc", x.new_zeros(()))
        pyro.sample("mu", dist.Normal(loc, 1.0))
        with plate(x):
            pyro.sample("z", dist.Normal(x.mean(-1), 1.0))

    return model, guide


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, sizing", [
    ("rows", "rows"), ("size-less", "size-less"), ("scvi_plate", "follows-batch"),
    ("subsampled", "model-subsamples"), ("air_like", "guide-subsamples"),
])
def test_data_plate_sizing_is_read_off_the_trace(case, sizing, dtype):
    if case in ("rows", "size-less"):
        model, guide = _plain(sizeless=case == "size-less")
        data = _x(dtype)
    elif case == "scvi_plate":  # more cells than a probe holds, so that B < n_obs there
        module = importlib.import_module("programs.scvi_plate")
        cells = module.CountModule(PROBE_ROWS + 44).to(dtype)
        model, guide = cells.model, cells.guide
        data = (torch.poisson(torch.full((PROBE_ROWS + 44, module.N_GENES), 3.0,
                                         dtype=torch.float64)).to(dtype),)
    else:
        model, guide, data = _corpus(case, dtype)
    a = analyze_programs(model, guide, data)
    assert a.data_plate.sizing == sizing
    n = data[0].shape[0]
    assert a.num_points == n  # every point of the data, however the plate is sized
    assert a.probe_rows == min(n, PROBE_ROWS)
    if sizing in ("model-subsamples", "guide-subsamples"):
        module = importlib.import_module(f"programs.{case}")
        assert a.data_plate.subsample_size == module.SUBSAMPLE == a.chunk_points
    else:
        assert a.data_plate.subsample_size is None and a.chunk_points is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_sites_local_and_global_in_model_and_guide(dtype):
    model, guide = _plain()
    a = analyze_programs(model, guide, _x(dtype))
    assert a.data_plate.name == "data" and a.nesting == 1
    assert a.model_locals == ("z",) and a.model_globals == ("mu",)
    assert a.guide_locals == ("z",) and a.guide_globals == ("mu",) and a.has_global
    x_site = a.site("model", "x")
    assert x_site.kind == "observed" and x_site.data_dim == -1 and x_site.event_dim == 1
    assert a.vectorizes and a.vectorize_reason is None
    assert a.per_row_params == () and a.enumerated == ()


def test_scales_separate_pyros_subsampling_from_the_programs_own():
    n_obs = PROBE_ROWS + 10

    def model(x):
        with pyro.plate("cells", size=n_obs, subsample_size=x.shape[0]):
            with poutine.scale(scale=0.25):
                pyro.sample("x", dist.Normal(x.new_zeros(x.shape[0]), 1.0), obs=x[:, 0])

    def guide(x):
        pass

    a = analyze_programs(model, guide, _x(torch.float64, n=n_obs))
    site = a.site("model", "x")
    assert site.plate_scale == pytest.approx(n_obs / a.probe_rows)
    assert site.program_scale == pytest.approx(0.25)


@pytest.mark.parametrize("dtype", DTYPES)
def test_enumerated_and_factor_sites(dtype):
    def model(x):
        probs = pyro.param("probs", x.new_tensor([0.3, 0.7]), constraint=dist.constraints.simplex)
        pyro.factor("prior_term", x.new_tensor(-1.0))
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(probs), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(c.to(x.dtype), 1.0), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.factor("classifier", x[:, 0] * 0)

    a = analyze_programs(model, guide, _x(dtype))
    assert a.enumerated == ("c",)
    assert a.factors("model") == ("prior_term",) and a.factors("guide") == ("classifier",)
    assert a.site("guide", "classifier").local and not a.site("model", "prior_term").local


def test_draws_that_do_not_vectorize_are_found_by_the_error_inside_the_plate():
    model, guide, data = _corpus("cvae", torch.float64)
    a = analyze_programs(model, guide, data)
    assert not a.vectorizes and "mask" in a.vectorize_reason


def test_draws_that_mix_are_found_by_their_shapes():
    """A size-less plate does not check shapes: a model that flattens the draws into the
    points runs, and only the shapes tell."""
    def model(x):
        with pyro.plate("data"):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.reshape(-1, 2)[:, :1], 1.0).to_event(1),
                        obs=x[:, :1])

    def guide(x):
        with pyro.plate("data"):
            pyro.sample("z", dist.Normal(x[:, :2], 1.0).to_event(1))

    a = analyze_programs(model, guide, _x(torch.float64))
    assert not a.vectorizes and a.vectorize_reason.startswith("site 'x'")  # no error raised
    model, guide = _plain(sizeless=True)  # the same plate, draws kept apart: vectorizes
    assert analyze_programs(model, guide, _x(torch.float64)).vectorizes


def test_modules_from_programs_closures_and_registrations():
    model, guide, data = _corpus("vae_soft", torch.float32)
    a = analyze_programs(model, guide, data)
    assert [type(m).__name__ for m in a.modules] == ["VAE"]
    net = nn.Linear(3, 1)

    def closure_model(x):
        pyro.module("net", net)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(net(x)[:, 0], 1.0), obs=x[:, 0])

    a = analyze_programs(closure_model, lambda x: None, _x(torch.float32))
    assert len(a.modules) == 1 and a.modules[0] is net


def test_per_row_parameters_are_recorded_and_probed_on_all_rows():
    n = PROBE_ROWS + 4  # more rows than a probe: the per-row parameter forces all of them

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    def guide(x):
        loc = pyro.param("q_loc", x.new_zeros(n))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, 1.0))

    data = _x(torch.float64, n=n)
    pyro.param("q_loc", torch.zeros(n, dtype=torch.float64))  # trained: in the param store
    a = analyze_programs(model, guide, data)
    assert a.per_row_params == ("q_loc",) and a.probe_rows == n and a.chunk_points == n


def test_cached_per_program_and_signature_and_cheap():
    runs = []
    model, guide = _plain()

    def counted(fn):
        def wrapped(*args):
            runs.append(fn)
            return fn(*args)
        return wrapped

    m, g = counted(model), counted(guide)
    clear_cache()
    first = analyze_programs(m, g, _x(torch.float32))
    assert len(runs) == first.program_runs == 4  # probe pair + pair in a plate of draws
    assert analyze_programs(m, g, _x(torch.float32)) is first and len(runs) == 4
    other = analyze_programs(m, g, _x(torch.float32, n=N + 1))  # another signature
    assert other is not first and len(runs) == 8


def test_no_data_plate_is_one_error_naming_the_plates():
    def model(x):
        with pyro.plate("features", 3):
            pyro.sample("w", dist.Normal(x.new_zeros(3), 1.0))

    with pytest.raises(ValueError, match="no plate of the model or guide has the batch's size"):
        analyze_programs(model, lambda x: None, _x(torch.float64))
