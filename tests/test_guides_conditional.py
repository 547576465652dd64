"""ConditionalEncoder: q(z | x, y) reads the label as well as the image."""

import pytest
import torch

from ppl_vae import evaluate
from ppl_vae.guides import ConditionalEncoder
from ppl_vae.models import ConditionalVAE


def test_location_depends_on_the_label(dtype):
    guide = ConditionalEncoder(6, 3, latent_dim=2, hidden=8).to(dtype)
    x = torch.rand(4, 6, dtype=dtype)
    loc_a, _ = guide.encode(x, torch.zeros(4, dtype=torch.long))
    loc_b, _ = guide.encode(x, torch.full((4,), 2, dtype=torch.long))
    assert loc_a.dtype == dtype and not torch.allclose(loc_a, loc_b)
    with pytest.raises(ValueError, match="labels must lie"):
        guide(x, torch.tensor([0, 1, 2, 5]))


def test_pairs_with_conditional_vae_in_evaluate(dtype):
    model = ConditionalVAE(6, 3, latent_dim=2, hidden=8).to(dtype)
    guide = ConditionalEncoder(6, 3, latent_dim=2, hidden=8).to(dtype)
    x, y = torch.rand(10, 6, dtype=dtype), torch.arange(10) % 3
    ev = evaluate(model, guide, (x, y), num_samples=8)
    # Same draws for both bounds: logmeanexp >= mean, so IWAE >= ELBO up to rounding.
    assert ev["iwae"] >= ev["elbo"] - 1e-4 and ev["kl"] > 0
