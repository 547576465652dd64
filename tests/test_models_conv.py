"""ConvVAE (with ConvEncoder): 8x8 and 28x28 images; learns more than the pixel marginals."""

import pytest
import torch
from _runs import assert_trained_run

from ppl_vae import evaluate, fit
from ppl_vae.cli import main
from ppl_vae.guides import ConvEncoder
from ppl_vae.models import ConvVAE
from ppl_vae.programs.distributions import SoftBernoulli


def test_beats_independent_pixels_on_digits(digits):
    model, guide = ConvVAE((8, 8), latent_dim=8, channels=32), ConvEncoder((8, 8), 8, channels=32)
    fit(model, guide, digits.train.double(), epochs=10, batch_size=64, lr=3e-3, progress=False,
        seed=0)
    x = digits.test.double()
    ev = evaluate(model, guide, x, num_samples=20)
    # Baseline: each pixel Bernoulli with its training-set mean and no latent at all. Its
    # log-likelihood is exact; the VAE's ELBO is a lower bound on its own log p(x), so ELBO >
    # baseline means the model certainly explains the images better than the pixel marginals
    # (a collapsed posterior, KL = 0, cannot). Most of the -27 nats is the entropy of the grey
    # levels, which no model removes; measured margin 0.9 to 1.6 nats over seeds, the ELBO's
    # Monte Carlo standard error (K = 20, 360 images) is about 0.02: 0.4 is a margin noise cannot
    # fake.
    p = digits.train.double().mean(0).clamp(1e-3, 1 - 1e-3)
    baseline = float(SoftBernoulli(probs=p).log_prob(x).sum(-1).mean())
    assert ev["elbo"] > baseline + 0.4, (ev["elbo"], baseline)
    assert ev["kl"] > 0.3


@pytest.mark.parametrize("shape", [(8, 8), (28, 28)])
def test_shapes_and_dtypes(shape, dtype):
    h, w = shape
    model = ConvVAE(shape, latent_dim=3, channels=8).to(dtype)
    guide = ConvEncoder(shape, 3, channels=8).to(dtype)
    x = torch.rand(5, h * w, dtype=dtype)
    loc, scale = guide.encode(x)
    assert loc.shape == (5, 3) and scale.dtype == dtype
    # Decoding a (K, N, latent) stack of draws (vectorized particles) keeps the leading dims.
    assert model.decode(torch.randn(7, 5, 3, dtype=dtype)).shape == (7, 5, h * w)
    ev = evaluate(model, guide, x, num_samples=4)
    # On the same draws logmeanexp >= mean (Jensen), so IWAE >= ELBO up to rounding.
    assert ev["iwae"] >= ev["elbo"] - 1e-4


def test_bad_image_shapes():
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvVAE((10, 10))
    with pytest.raises(ValueError, match="image_shape"):
        ConvEncoder(None)


def test_cli_trains_conv_vae_on_28x28(tmp_path, capsys):
    code = main(["train", "--model", "conv_vae", "--guide", "conv", "--data", "binary",
                 "--latent-dim", "3", "--model-option", "channels=4", "--guide-option",
                 "channels=4", "--epochs", "2", "--batch-size", "256", "--eval-samples", "2",
                 "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0
    assert_trained_run(tmp_path / "run", capsys.readouterr().out, model="conv_vae",
                       guide="conv", epochs=2)
