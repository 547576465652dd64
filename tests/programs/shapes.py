"""A table of model/guide shapes, one small pair per row, covering the kinds of program Pyro's own
``tests/infer/test_valid_models.py`` exercises (written here from scratch): nested and side by
side plates, a sequential plate, a plate the program subsamples, a size-less plate, ``obs_mask``,
``pyro.factor`` in model and guide, sites without ``rsample``, enumerated sites, an empty pair,
a plate used twice, explicit and automatic plate dimensions, a Markov chain.

Each row: ``model``, ``guide``, ``args`` (float64 tensors), ``options`` for the ELBO, and
``data_plate``: the plate ppl-vae must find on these arguments (rows of the first), or None and
``plate_error``, a fragment of the error it must raise when there is none or several.
"""

from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.testing.fakes import NonreparameterizedNormal

D = torch.float64


def _x(*shape, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D),)


def _loc(name, *shape, value=0.0):
    return pyro.param(name, torch.full(shape, value, dtype=D))


def _scale(name, *shape):
    return pyro.param(name, torch.full(shape, 0.8, dtype=D), constraint=dist.constraints.positive)


@dataclass
class Shape:
    name: str
    model: object
    guide: object
    args: tuple
    data_plate: str | None  # None: no plate is the data plate, and finding one is refused
    options: dict = field(default_factory=dict)
    plate_error: str | None = None  # a fragment of that refusal


# --- empty and global-only ------------------------------------------------------------------

def empty_model(x):
    pass


def empty_guide(x):
    pass


def global_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
    pyro.sample("x", dist.Normal(mu, 1.0).expand(x.shape).to_event(1), obs=x)


def global_guide(x):
    pyro.sample("mu", dist.Normal(_loc("mu_loc"), _scale("mu_scale")))


# --- plates ---------------------------------------------------------------------------------

def local_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def local_guide(x):
    pyro.sample("mu", dist.Normal(_loc("mu_loc"), _scale("mu_scale")))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(_loc("z_loc", x.shape[0]) + 0.1 * x, _scale("z_scale", 1)))


def nested_model(x):  # x: (groups, points), as many of each: which plate is over data points?
    with pyro.plate("groups", x.shape[0], dim=-2):
        g = pyro.sample("g", dist.Normal(x.new_zeros(()), 1.0))
        with pyro.plate("data", x.shape[1], dim=-1):
            pyro.sample("x", dist.Normal(g, 1.0), obs=x)


def nested_guide(x):
    with pyro.plate("groups", x.shape[0], dim=-2):
        pyro.sample("g", dist.Normal(_loc("g_loc", x.shape[0], 1), _scale("g_scale", 1, 1)))


def nested_rows_model(x):  # the outer plate runs over rows: it is the data plate
    with pyro.plate("rows", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        with pyro.plate("features", x.shape[1], dim=-1):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def nested_rows_guide(x):
    with pyro.plate("rows", x.shape[0], dim=-2):
        pyro.sample("z", dist.Normal(x.mean(-1, keepdim=True), _scale("z_scale", 1, 1)))


def side_by_side_model(x, y):
    with pyro.plate("a", x.shape[0]):
        za = pyro.sample("za", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(za, 1.0), obs=x)
    with pyro.plate("b", y.shape[0]):
        zb = pyro.sample("zb", dist.Normal(y.new_zeros(()), 1.0))
        pyro.sample("y", dist.Normal(zb, 1.0), obs=y)


def side_by_side_guide(x, y):
    with pyro.plate("a", x.shape[0]):
        pyro.sample("za", dist.Normal(0.5 * x, _scale("za_scale", 1)))
    with pyro.plate("b", y.shape[0]):
        pyro.sample("zb", dist.Normal(0.5 * y, _scale("zb_scale", 1)))


def side_by_side_args():
    return _x(5, seed=1) + (torch.randn(3, generator=torch.Generator().manual_seed(2), dtype=D),)


def sequential_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
    for i in pyro.plate("data", x.shape[0]):
        z = pyro.sample(f"z_{i}", dist.Normal(mu, 1.0))
        pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=x[i])


def sequential_guide(x):
    pyro.sample("mu", dist.Normal(_loc("mu_loc"), _scale("mu_scale")))
    for i in pyro.plate("data", x.shape[0]):
        pyro.sample(f"z_{i}", dist.Normal(0.5 * x[i], _scale("z_scale")))


def subsampled_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0], subsample_size=3) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def subsampled_guide(x):
    pyro.sample("mu", dist.Normal(_loc("mu_loc"), _scale("mu_scale")))
    with pyro.plate("data", x.shape[0], subsample_size=3) as idx:
        pyro.sample("z", dist.Normal(0.5 * x[idx], _scale("z_scale")))


def sizeless_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data"):
        z = pyro.sample("z", dist.Normal(mu.expand(x.shape), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def sizeless_guide(x):
    pyro.sample("mu", dist.Normal(_loc("mu_loc"), _scale("mu_scale")))
    with pyro.plate("data"):
        pyro.sample("z", dist.Normal(0.5 * x, _scale("z_scale")))


def reuse_model(x):
    plate = pyro.plate("data", x.shape[0])
    with plate:
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
    with plate:
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def reuse_guide(x):
    plate = pyro.plate("data", x.shape[0])
    with plate:
        pyro.sample("z", dist.Normal(0.5 * x, _scale("z_scale")))


def dims_model(x):  # x: (points, 2); one explicit dimension, one allocated by Pyro
    with pyro.plate("data", x.shape[0], dim=-2):
        with pyro.plate("features", x.shape[1]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def dims_guide(x):
    with pyro.plate("features", x.shape[1]):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(0.5 * x, _scale("z_scale")))


# --- masks and factors ----------------------------------------------------------------------

def obs_mask_model(x):
    mask = torch.arange(x.shape[0]) % 2 == 0
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x, obs_mask=mask)


def obs_mask_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.5 * x, _scale("z_scale")))
        pyro.sample("x_unobserved", dist.Normal(_loc("x_loc", x.shape[0]), _scale("x_scale")))


def factor_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.factor("penalty", -0.5 * (z - x) ** 2)


def factor_guide_model(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape), obs=x)


def factor_guide(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.5 * x, _scale("z_scale")))
        pyro.factor("tilt", -0.1 * z**2, has_rsample=True)


# --- sites without rsample, discrete, enumerated ----------------------------------------------

def nonreparam_guide(x):
    pyro.sample("mu", NonreparameterizedNormal(_loc("mu_loc"), _scale("mu_scale")))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(_loc("z_loc", x.shape[0]) + 0.1 * x, _scale("z_scale", 1)))


def discrete_model(x):
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Bernoulli(x.new_full((), 0.3)))
        pyro.sample("x", dist.Normal(2.0 * c - 1.0, 1.0), obs=x)


def discrete_guide(x):
    p = pyro.param("p", torch.full(x.shape, 0.4, dtype=D), constraint=dist.constraints.unit_interval)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("c", dist.Bernoulli(p))


def enum_guide(x):
    p = pyro.param("p", torch.full(x.shape, 0.4, dtype=D), constraint=dist.constraints.unit_interval)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("c", dist.Bernoulli(p), infer={"enumerate": "parallel"})


def enum_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Bernoulli(x.new_full((), 0.3)), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(mu + 2.0 * c - 1.0, 1.0), obs=x)


def enum_model_guide(x):
    pyro.sample("mu", dist.Normal(_loc("mu_loc"), _scale("mu_scale")))


# --- a Markov chain -------------------------------------------------------------------------

def markov_model(x):  # x: (sequences, steps)
    with pyro.plate("data", x.shape[0]):
        z = x.new_zeros(x.shape[0])
        for t in pyro.markov(range(x.shape[1])):
            z = pyro.sample(f"z_{t}", dist.Normal(0.9 * z, 1.0))
            pyro.sample(f"x_{t}", dist.Normal(z, 0.5), obs=x[:, t])


def markov_guide(x):
    with pyro.plate("data", x.shape[0]):
        for t in pyro.markov(range(x.shape[1])):
            pyro.sample(f"z_{t}", dist.Normal(0.7 * x[:, t], _scale("z_scale")))


NESTING = {"max_plate_nesting": 2}
SHAPES = [
    Shape("empty", empty_model, empty_guide, _x(4), None, plate_error="no plate"),
    Shape("global_only", global_model, global_guide, _x(4), None, plate_error="no plate"),
    Shape("local_and_global", local_model, local_guide, _x(5), "data"),
    Shape("nested_ambiguous", nested_model, nested_guide, _x(4, 4), None, NESTING,
          plate_error="several plates have the batch's size (4 rows): 'groups'"),
    Shape("nested_outer_data", nested_rows_model, nested_rows_guide, _x(4, 3), "rows", NESTING),
    Shape("side_by_side", side_by_side_model, side_by_side_guide, side_by_side_args(), "a"),
    Shape("sequential_plate", sequential_model, sequential_guide, _x(3), "data"),
    Shape("user_subsampled", subsampled_model, subsampled_guide, _x(6), "data"),
    Shape("sizeless_plate", sizeless_model, sizeless_guide, _x(5), "data"),
    Shape("plate_reuse", reuse_model, reuse_guide, _x(5), "data"),
    Shape("dim_allocation", dims_model, dims_guide, _x(4, 2), "data", NESTING),
    Shape("obs_mask", obs_mask_model, obs_mask_guide, _x(6), "data"),
    Shape("factor_in_model", factor_model, reuse_guide, _x(5), "data"),
    Shape("factor_in_guide", factor_guide_model, factor_guide, _x(5), "data"),
    Shape("no_rsample", local_model, nonreparam_guide, _x(5), "data"),
    Shape("discrete_sampled", discrete_model, discrete_guide, _x(5), "data"),
    Shape("enumerated_in_guide", discrete_model, enum_guide, _x(5), "data", {"max_plate_nesting": 1}),
    Shape("enumerated_in_model", enum_model, enum_model_guide, _x(5), "data",
          {"max_plate_nesting": 1}),
    Shape("markov_chain", markov_model, markov_guide, _x(4, 3), "data"),
]
