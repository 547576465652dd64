"""Pre-flight checks: the support check and finding the data plate."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppl_vae
from ppl_vae.programs.checks import check_support, resolve_data_plate


def bernoulli_model(x, validate_args=None):
    p = pyro.param("p", x.new_full((x.shape[1],), 0.5), constraint=dist.constraints.unit_interval)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Bernoulli(p, validate_args=validate_args).to_event(1), obs=x)


def no_guide(x, validate_args=None):
    pass


def soft_model(x):
    bernoulli_model(x, validate_args=False)


def grey_levels(n=12, d=3, dtype=torch.float32):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(0), dtype=dtype)


def test_support_violation_names_site_and_rows():
    x = torch.zeros(12, 3)
    x[4, 1] = 0.5
    x[9, 0] = 0.25
    with pytest.raises(ValueError, match=r"site 'x': 2 row\(s\) .* Bernoulli .*rows 4, 9"):
        check_support(bernoulli_model, no_guide, (x,), batch_size=5)


def test_support_is_not_checked_where_the_distribution_switches_validation_off(dtype):
    # Pyro's VAE example on MNIST: a Bernoulli scores [0, 1] grey levels, validate_args=False.
    x = grey_levels(dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_support(soft_model, no_guide, (x,), batch_size=5)
    result = ppl_vae.fit(soft_model, no_guide, x, estimator="mc", epochs=1, batch_size=6,
                         progress=False)
    # The objective is Pyro's: the soft cross-entropy sum x log p + (1 - x) log(1 - p).
    p = pyro.param("p").detach()
    assert torch.isfinite(torch.as_tensor(result.history["train_elbo"])).all()
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1).mean()
    elbo = ppl_vae.evaluate(soft_model, no_guide, x, num_samples=2)["elbo"]
    assert elbo == pytest.approx(float(expected), rel=1e-5)


def test_support_violation_with_validation_off_globally_is_a_warning():
    x = grey_levels()
    with pyro.validation_enabled(False):
        with pytest.warns(UserWarning, match=r"site 'x': 12 row.*validation is off"):
            check_support(bernoulli_model, no_guide, (x,), batch_size=5)


def test_support_violation_through_wrappers_is_still_an_error():
    # validate_args=False on the wrapper (Independent) is not on the distribution that scores.
    def model(x):
        with pyro.plate("data", x.shape[0]):
            fn = dist.Bernoulli(x.new_full((3,), 0.5)).to_event(1)
            pyro.sample("x", fn.mask(True), obs=x)

    with pytest.raises(ValueError, match="outside the support"):
        check_support(model, no_guide, (grey_levels(),), batch_size=12)


def seq_model(seqs):
    with pyro.plate("sequences", seqs.shape[0]):
        with pyro.plate("steps", seqs.shape[1]):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=seqs)


def test_data_plate_is_the_plate_of_the_batch_size():
    seqs = torch.randn(6, 4)
    assert resolve_data_plate(seq_model, no_guide, (seqs,)) == "sequences"
    with pytest.raises(ValueError, match=r"several plates .*'sequences' \(size 4\), 'steps'"):
        resolve_data_plate(seq_model, no_guide, (torch.randn(4, 4),))
    assert resolve_data_plate(seq_model, no_guide, (torch.randn(4, 4),), "steps") == "steps"


def test_unknown_data_plate_name_lists_the_plates():
    with pytest.raises(ValueError, match=r"data_plate='data': .* their plates: 'sequences' "
                                         r"\(size 6\), 'steps' \(size 4\)"):
        resolve_data_plate(seq_model, no_guide, (torch.randn(6, 4),), "data")


def test_hard_coded_plate_size_other_than_the_batch_is_an_error():
    def model(x):  # sees 10 of every 50 rows
        with pyro.plate("data", 10):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[:10])

    x = torch.randn(50)
    with pytest.raises(ValueError, match="no plate .* batch's size .*'data' \\(size 10\\)"):
        resolve_data_plate(model, no_guide, (x,))
    with pytest.raises(ValueError, match="has size 10 but the batch has 50 rows"):
        resolve_data_plate(model, no_guide, (x,), "data")
    with pytest.raises(ValueError, match="has size 10 but the batch has 50 rows"):
        ppl_vae.fit(model, no_guide, x, data_plate="data", epochs=1, batch_size=50,
                    progress=False)


def test_sizeless_plate_whose_sites_disagree_on_its_size_is_an_error():
    def model(x):
        with pyro.plate("data"):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0))  # broadcasts along the plate
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data"):
            pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0))

    with pytest.raises(ValueError, match=r"'data' has no size and its sites disagree .*\[1, 5\]"):
        resolve_data_plate(model, guide, (torch.randn(5),))


def test_plate_the_program_subsamples_may_stand_for_the_whole_data_set():
    def model(x, num_data=100):
        with pyro.plate("data", num_data, subsample_size=x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    x = torch.randn(8)
    assert resolve_data_plate(model, no_guide, (x,), num_data=100) == "data"
    with pytest.raises(ValueError, match="no plate"):
        resolve_data_plate(model, no_guide, (x,), num_data=50)


def test_a_model_without_observed_sites_is_a_warning():
    def prior_only(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))

    def observed(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))

    x = torch.zeros(4, 1)
    with pytest.warns(UserWarning, match="the model has no observed site"):
        check_support(prior_only, guide, (x,), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_support(observed, guide, (x,), batch_size=4)
