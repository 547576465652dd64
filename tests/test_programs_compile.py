"""``jit="compile"`` on the corpus (``tests/programs``, Pyro's way of writing programs): every
program whose estimator has a recorded variant trains through the fused compiled step
(``ppl_vae.recording.fused``) on exactly the trajectory of the recorded, unfused one."""

import warnings

import pyro
import pytest
import torch
from test_programs_corpus import PROGRAMS, _cases, load

from ppl_vae.estimators.registry import ESTIMATORS, make_elbo
from ppl_vae.recording.compile import JitFallbackWarning, inductor_unavailable
from ppl_vae.train.state import init_state, update

_NO_INDUCTOR = inductor_unavailable()
CASES = [c for c in _cases() if ESTIMATORS[c[1]].has_jit]
STEPS = 5  # two checked steps, the fused step's compile and check, two fused steps


def _train(program, estimator, jit):
    pyro.clear_param_store()
    torch.manual_seed(0)
    module, model, guide, data = load(program, torch.float64)
    elbo = make_elbo(estimator, jit=jit, **module.ELBO_OPTIONS)
    state = init_state(model, guide, elbo, data, num_data=data[0].shape[0])
    pyro.set_rng_seed(1)
    with pyro.validation_enabled(False):
        losses = torch.stack([update(state, data)[1] for _ in range(STEPS)])
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    for i, program_ in enumerate((model, guide)):
        if isinstance(program_, torch.nn.Module):
            params.update({f"{i}.{k}": v.detach().clone() for k, v in program_.named_parameters()})
    return state, losses, params


def test_every_program_has_a_compiled_case():
    assert {p for p, _ in CASES} == set(PROGRAMS)


@pytest.mark.slow  # one Inductor build per case, a few seconds each
@pytest.mark.skipif(_NO_INDUCTOR is not None, reason=str(_NO_INDUCTOR))
@pytest.mark.parametrize("program, estimator", CASES, ids=[f"{p}-{e}" for p, e in CASES])
def test_compiled_fused_step_follows_the_recorded_one(program, estimator):
    with warnings.catch_warnings():
        warnings.simplefilter("error", JitFallbackWarning)
        state, losses, params = _train(program, estimator, "compile")
    assert state.fused is not None and state.fused.num_compiled == 1
    _, want_losses, want = _train(program, estimator, True)
    torch.testing.assert_close(losses, want_losses, rtol=1e-10, atol=1e-12)
    assert params.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(params[name], value, rtol=1e-10, atol=1e-12, msg=name)
