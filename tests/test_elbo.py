import pyro.infer
import pytest

from ppl_vae import make_elbo
from ppl_vae.estimators.registry import ESTIMATORS


def test_core_names_map_to_pyro_elbos():
    assert type(make_elbo("mc")) is pyro.infer.Trace_ELBO
    # Pyro's TraceMeanField_ELBO, with a clear error for guide sites without rsample
    assert isinstance(make_elbo("analytic"), pyro.infer.TraceMeanField_ELBO)
    assert type(make_elbo("enum")) is pyro.infer.TraceEnum_ELBO


def test_particles_are_passed_on():
    elbo = make_elbo("mc", num_particles=8, vectorize_particles=True)
    assert elbo.num_particles == 8 and elbo.vectorize_particles


def test_unknown_estimator_lists_the_choices():
    with pytest.raises(ValueError) as info:
        make_elbo("bogus")
    for name in ESTIMATORS:
        assert name in str(info.value)


def test_bad_particle_count():
    with pytest.raises(ValueError, match="num_particles"):
        make_elbo("mc", num_particles=0)
