"""Every test starts from a seeded RNG, Pyro validation on, and an empty param store."""

import os

import pyro
import pytest
import torch

# Many short fits: jit="auto"'s background compiles would only compete with them for the two
# cores (tests/test_background_compile.py switches them on, with a cache folder of its own).
# jit="compile" tests use the default compile cache (~/.cache/ppl-vae/inductor), as users do.
os.environ.setdefault("PPL_VAE_BACKGROUND_COMPILE", "0")


@pytest.fixture(autouse=True)
def _pyro_reset():
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session", autouse=True)
def _threads():
    # The test models are tiny: one thread is as fast as two and leaves a core free.
    torch.set_num_threads(1)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture(scope="session")
def digits():
    from ppl_vae.data.datasets import load_digits

    return load_digits()
