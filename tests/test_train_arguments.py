"""Bad arguments to ``fit``: each row an input, the exception class and a fragment of its
one-line message naming the argument, raised before the first epoch (no callback ever runs)."""

import math
import os

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vae
from ppl_vae.train.arguments import as_integer
from ppl_vae.train.keywords import legacy_keywords
from ppl_vae.train.options import GROUPS, Checkpoint, FitConfig, Parallel

X = torch.rand(20, 3, generator=torch.Generator().manual_seed(0)) + 0.5


def model(x):
    loc = pyro.sample("loc", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.LogNormal(loc, 1.0).to_event(1), obs=x)  # positive support


def guide(x):
    m = pyro.param("m", lambda: x.new_zeros(3))
    pyro.sample("loc", dist.Normal(m, 1.0).to_event(1))


def _file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def _with_checkpoint(tmp_path):
    """A folder holding another run's checkpoint (its content is never read without resume)."""
    (tmp_path / "checkpoint.pt").write_bytes(b"another run")
    return tmp_path


def _negative_row():
    v = X[:8].clone()
    v[3, 1] = -1.0
    return v


def _nan_row():
    v = X[:8].clone()
    v[2, 0] = float("nan")
    return v


CASES = [
    # integers must be integers
    ({"epochs": 1.7}, TypeError, "epochs must be an integer, got 1.7"),
    ({"epochs": True}, TypeError, "epochs must be an integer, got True"),
    ({"epochs": "3"}, TypeError, "epochs must be an integer"),
    ({"epochs": 0}, ValueError, "epochs must be >= 1, got 0"),
    ({"num_particles": 1.5}, TypeError, "num_particles must be an integer, got 1.5"),
    ({"num_particles": 0}, ValueError, "num_particles must be >= 1"),
    ({"batch_size": 49.9}, TypeError, "batch_size must be an integer, got 49.9"),
    ({"batch_size": 10.0}, TypeError, "batch_size must be an integer, got 10.0"),
    ({"batch_size": True}, TypeError, "batch_size must be an integer, got True"),
    ({"batch_size": 0}, ValueError, "batch_size must lie in [1, 20]"),
    ({"batch_size": 21}, ValueError, "batch_size must lie in [1, 20]"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"seed": 2**32}, ValueError, "seed must be <= 4294967295"),
    ({"seed": 1.0}, TypeError, "seed must be an integer"),
    ({"patience": 0}, ValueError, "patience must be >= 1"),
    ({"patience": 2.5}, TypeError, "patience must be an integer"),
    ({"max_epochs": 0}, ValueError, "max_epochs must be >= 1"),
    ({"tolerance": -1}, ValueError, "tolerance must be finite and > 0"),
    ({"time_budget": 0}, ValueError, "time_budget must be finite and > 0"),
    ({"lr_schedule": "cosine"}, ValueError, "lr_schedule must be one of (None, 'plateau')"),
    ({"num_nodes": 0}, ValueError, "num_nodes must be >= 1"),
    ({"devices": 1.5}, TypeError, "devices must be an integer, got 1.5"),
    ({"devices": True}, TypeError, "devices must be an integer, got True"),
    ({"devices": 0}, ValueError, "devices must be >= 1"),
    ({"devices": []}, ValueError, "devices is an empty list"),
    ({"devices": [0, 1.5]}, TypeError, "devices[1] must be an integer"),
    ({"strategy": 3}, TypeError, "strategy must be a non-empty string"),
    # the learning rate
    ({"lr": 0}, ValueError, "lr must be finite and > 0, got 0.0"),
    ({"lr": -1e-3}, ValueError, "lr must be finite and > 0"),
    ({"lr": math.nan}, ValueError, "lr must be finite and > 0, got nan"),
    ({"lr": math.inf}, ValueError, "lr must be finite and > 0, got inf"),
    ({"lr": "0.01"}, TypeError, "lr must be a real number, got '0.01'"),
    ({"lr": True}, TypeError, "lr must be a real number, got True"),
    # flags are True or False
    ({"resume": "no"}, TypeError, "resume must be True or False, got 'no'"),
    ({"jit": 1}, TypeError, "jit must be one of False, True, 'auto', 'compile'; got 1"),
    ({"jit": "fast"}, ValueError, "jit must be one of False, True, 'auto', 'compile'; got 'fast'"),
    ({"threads": 0}, ValueError, "threads must be 'auto', None or an integer >= 1, got 0"),
    ({"threads": 1.5}, TypeError, "threads must be 'auto', None or an integer >= 1, got 1.5"),
    ({"vectorize_particles": None}, TypeError, "vectorize_particles must be True or False"),
    ({"progress": "yes"}, TypeError, "progress must be True or False"),
    # names, types and objects
    ({"estimator": None}, TypeError, "estimator must be a non-empty string"),
    ({"estimator": "bogus"}, ValueError, "unknown estimator 'bogus'"),
    ({"data_plate": 0}, TypeError, "data_plate must be a non-empty string"),
    ({"dtype": torch.int64}, TypeError, "dtype must be a floating torch.dtype"),
    ({"dtype": "float64"}, TypeError, "dtype must be a floating torch.dtype"),
    ({"elbo_options": [("max_plate_nesting", 1)]}, TypeError, "elbo_options must be a dict"),
    ({"elbo_options": {"max_plate_nestin": 1}}, TypeError,
     "elbo_options ['max_plate_nestin']: the 'mc' estimator's ELBO does not take them"),
    ({"device": "no-such-device"}, ValueError, "unknown device 'no-such-device'"),
    ({"optimizer": "adamish"}, ValueError, "unknown optimizer 'adamish'"),
    ({"optimizer": torch.optim.Adam([torch.zeros(1, requires_grad=True)])}, TypeError,
     "pass the class (optimizer=torch.optim.Adam)"),
    ({"optimizer": dict}, TypeError, "optimizer dict is not a torch.optim.Optimizer subclass"),
    ({"optimizer": 42}, TypeError, "optimizer must be a name"),
    ({"callbacks": [42]}, TypeError, "callbacks[0] is not callable: 42"),
    ({"callbacks": lambda record, state: None}, TypeError, "pass callbacks=[fn]"),
    ({"callbacks": "print"}, TypeError, "callbacks must be a sequence of callables, got str"),
    # the checkpoint folder
    ({"checkpoint_dir": _file}, ValueError, "is a file, not a folder"),
    ({"checkpoint_dir": lambda tmp: _file(tmp) / "sub"}, ValueError, "which is a file"),
    ({"checkpoint_dir": 3}, TypeError, "checkpoint_dir must be a path"),
    ({"resume": True}, ValueError, "resume=True needs checkpoint_dir"),
    ({"checkpoint_dir": _with_checkpoint}, FileExistsError,
     "already holds a run's checkpoint.pt: pass resume=True to continue that run"),
    # validation data: like the training rows, and through the same checks
    ({"validation_data": X[:8, :2]}, ValueError,
     "validation_data has rows of shape (2,) but data has (3,)"),
    ({"validation_data": (X[:8], X[:8])}, ValueError,
     "validation_data has 2 member(s) but data has 1"),
    ({"validation_data": _negative_row()}, ValueError,
     "validation_data: observed site 'x': 1 row(s) lie outside the support"),
    ({"validation_data": _nan_row()}, ValueError,
     "validation_data has NaN or infinite values in 1 row(s): 2"),
    ({"validation_data": X[:0]}, ValueError, "validation_data is empty"),
    ({"validation_data": "rows"}, ValueError, "validation_data: cannot be read"),
]


@pytest.mark.parametrize("override, error, fragment", CASES,
                         ids=[f"{next(iter(c[0]))}-{i}" for i, c in enumerate(CASES)])
def test_bad_argument_is_named_before_the_first_epoch(override, error, fragment, tmp_path):
    # Each option in its group (objective=Objective(num_particles=...), ...): the group checks
    # it when built, with the same one-line message.
    ran = []
    kwargs = {"estimator": "mc", "epochs": 2, "batch_size": 10, "progress": False,
              "callbacks": [lambda record, state: ran.append(record["epoch"])]}
    grouped = {}
    for key, value in override.items():
        value = value(tmp_path) if key == "checkpoint_dir" and callable(value) else value
        if key in legacy_keywords():
            group, name = legacy_keywords()[key]
            grouped.setdefault(group, {})[name] = value
        else:
            kwargs[key] = value
    with pytest.raises(error) as info:
        groups = {group: GROUPS[group](**fields) for group, fields in grouped.items()}
        ppl_vae.fit(model, guide, X, **kwargs, **groups)
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message
    assert ran == []  # no epoch ran
    if (tmp_path / "checkpoint.pt").exists() and not override.get("resume"):
        assert (tmp_path / "checkpoint.pt").read_bytes() == b"another run"  # left as it was


def test_valid_integer_like_values_are_accepted():
    assert as_integer("epochs", np.int64(3)) == 3 and type(as_integer("epochs", np.int64(3))) is int
    config = FitConfig(epochs=np.int32(2), lr=np.float32(0.5), optimizer=torch.optim.SGD,
                       checkpoint=Checkpoint(resume=np.bool_(False)),
                       parallel=Parallel(devices=[0, 1]))
    assert config.epochs == 2 and config.lr == 0.5 and config.checkpoint.resume is False
    assert config.parallel.devices == (0, 1) and config.optimizer is torch.optim.SGD
    assert type(config.epochs) is int and type(config.lr) is float


def test_an_optimizer_factory_is_used(tmp_path):
    made = []

    def factory(params, lr):
        made.append(lr)
        return torch.optim.SGD(params, lr=lr)

    ppl_vae.fit(model, guide, X, estimator="mc", epochs=1, batch_size=10, lr=0.25,
                optimizer=factory, progress=False)
    assert made == [0.25]


def test_a_checkpoint_dir_that_does_not_exist_yet_is_created_at_the_first_checkpoint(tmp_path):
    target = tmp_path / "new" / "run"
    ppl_vae.fit(model, guide, X, estimator="mc", epochs=1, batch_size=10, progress=False,
                checkpoint=target)
    assert (target / "checkpoint.pt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_checkpoint_dir_without_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="is not writable"):
        ppl_vae.fit(model, guide, X, estimator="mc", epochs=1, batch_size=10, progress=False,
                    checkpoint=locked / "run")
