"""Every registered estimator on a table of model/guide shapes (``tests/programs/shapes.py``):
each gives plain Pyro's loss for its counterpart ELBO, same parameters and seed, to float
tolerance, or refuses with a message naming why. And on each shape the data plate is found, or
refused with a message listing the plates.
"""

import re

import pyro
import pytest
from programs import COUNTERPART
from programs.shapes import SHAPES

from ppl_vae import ESTIMATORS, make_elbo
from ppl_vae.estimators.registry import get_spec
from ppl_vae.programs.checks import resolve_data_plate

NOT_REPARAMETERIZED = "reparameteriz"
# (shape, estimator) -> fragment of the refusal: the estimators whose spec needs every guide
# site reparameterized (analytic, Pyro's TraceMeanField_ELBO; dreg) refuse a site without
# rsample, naming it; stl, iwae and vimco give such a site a score-function term.
REFUSED = {
    (shape, estimator): NOT_REPARAMETERIZED
    for shape in ("no_rsample", "discrete_sampled", "enumerated_in_guide")
    for estimator in ESTIMATORS if get_spec(estimator).needs_rsample
}
# TraceGraph_ELBO's surrogate (score, tracegraph, stl) looks every tracked draw up in the guide:
# a model-enumerated site the guide lacks is refused by name (Pyro: KeyError in loss_and_grads).
REFUSED.update({("enumerated_in_model", e): "not in the guide" for e in ("score", "tracegraph", "stl")})
# Where plain Pyro's own counterpart fails, ppl-vae (which runs the same ELBO) fails the same way:
# recorded so that a fix on either side shows up. TraceEnum_ELBO multiplies obs_mask's boolean
# mask into a float contraction; TraceMeanField_ELBO looks up a model-enumerated site in the guide.
PYRO_FAILS = {
    ("obs_mask", "enum"): (RuntimeError, "same dtype"),
    ("enumerated_in_model", "analytic"): (KeyError, "c"),
}
PENDING: dict = {}


def _cases():
    for shape in SHAPES:
        for estimator in ESTIMATORS:
            marks = ()
            if (shape.name, estimator) in PENDING:
                marks = pytest.mark.xfail(strict=True, reason=PENDING[shape.name, estimator])
            yield pytest.param(shape, estimator, marks=marks, id=f"{shape.name}-{estimator}")


def test_every_estimator_has_a_pyro_counterpart():
    missing = sorted(set(ESTIMATORS) - set(COUNTERPART))
    assert not missing, f"add the plain-Pyro counterpart of {missing} to tests/programs COUNTERPART"


# Pyro's own warnings when an estimator without enumeration meets a site marked for it (it draws
# the site, from the guide or from the prior): the same in ppl-vae as in Pyro.
@pytest.mark.filterwarnings("ignore:.*enumerate sites", "ignore:Found vars in model but not guide",
                            "ignore:the 'vimco' estimator with num_particles=1")
@pytest.mark.parametrize("shape, estimator", list(_cases()))
def test_estimator_gives_pyro_loss_or_refuses(shape, estimator):
    ours = make_elbo(estimator, **shape.options)
    if (shape.name, estimator) in REFUSED:
        with pytest.raises((ValueError, NotImplementedError), match=REFUSED[shape.name, estimator]):
            ours.loss(shape.model, shape.guide, *shape.args)
        return
    reference = COUNTERPART[estimator](**shape.options)
    if (shape.name, estimator) in PYRO_FAILS:
        error, fragment = PYRO_FAILS[shape.name, estimator]
        for elbo in (reference, ours):
            with pytest.raises(error, match=fragment):
                elbo.loss(shape.model, shape.guide, *shape.args)
        return
    pyro.set_rng_seed(3)
    expected = reference.loss(shape.model, shape.guide, *shape.args)
    pyro.set_rng_seed(3)
    got = ours.loss(shape.model, shape.guide, *shape.args)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_data_plate_is_found_or_refused_naming_the_plates(shape):
    if shape.data_plate is None:
        with pytest.raises(ValueError, match=re.escape(shape.plate_error)):
            resolve_data_plate(shape.model, shape.guide, shape.args)
    else:
        assert resolve_data_plate(shape.model, shape.guide, shape.args) == shape.data_plate
        # An explicit name is checked, not trusted.
        assert resolve_data_plate(shape.model, shape.guide, shape.args,
                                  shape.data_plate) == shape.data_plate
        with pytest.raises(ValueError, match=f"their plates: .*'{shape.data_plate}'"):
            resolve_data_plate(shape.model, shape.guide, shape.args, "no_such_plate")
