"""ConvEncoder: an image encoder that also pairs with the MLP decoder."""

import torch
from _runs import assert_trained_run

from ppl_vae import fit
from ppl_vae.cli import main
from ppl_vae.guides import ConvEncoder
from ppl_vae.models import VAE


def test_encoder_locations_separate_classes(digits):
    # After training, q(z | x) means of two digit classes lie apart: the encoder reads the image.
    model, guide = VAE(64, 4, hidden=64), ConvEncoder((8, 8), 4, channels=32)
    fit(model, guide, digits.train.double(), epochs=8, batch_size=64, lr=3e-3, progress=False,
        seed=0)
    x, y = digits.test.double(), digits.test_labels
    loc, scale = guide.encode(x)
    assert loc.dtype == torch.float64 and bool((scale > 0).all())
    a, b = loc[y == 0].detach(), loc[y == 1].detach()
    # Distance between class centroids in units of the within-class spread: an encoder that
    # ignored its input would give ~0 (noise ~ 1/sqrt(36 images) ~ 0.2); measured above 1.
    spread = torch.sqrt((a.var(0) + b.var(0)).sum() / 2)
    assert float((a.mean(0) - b.mean(0)).norm() / spread) > 0.7


def test_cli_with_conv_encoder(tmp_path, capsys):
    code = main(["train", "--model", "vae", "--guide", "conv", "--latent-dim", "3", "--hidden",
                 "16", "--epochs", "1", "--eval-samples", "3", "--no-progress",
                 "--out", str(tmp_path / "run")])
    assert code == 2  # --hidden is shared: ConvEncoder takes channels, not hidden
    code = main(["train", "--model", "vae", "--guide", "conv", "--latent-dim", "3",
                 "--model-option", "hidden=16", "--guide-option", "channels=8", "--epochs", "1",
                 "--eval-samples", "3", "--no-progress", "--out", str(tmp_path / "run2")])
    assert code == 0
    assert_trained_run(tmp_path / "run2", capsys.readouterr().out, model="vae", guide="conv",
                       epochs=1, rises=False)
