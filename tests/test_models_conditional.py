"""ConditionalVAE: samples of a chosen label look like that label's class (no classifier)."""

import pytest
import torch
from _runs import assert_trained_run

from ppl_vae import fit
from ppl_vae.cli import main
from ppl_vae.guides import ConditionalEncoder
from ppl_vae.models import ConditionalVAE


def test_samples_move_toward_the_class_means(digits):
    x, y = digits.train.double(), digits.train_labels
    model, guide = ConditionalVAE(64, 10, latent_dim=4, hidden=64), ConditionalEncoder(
        64, 10, latent_dim=4, hidden=64)
    fit(model, guide, (x, y), epochs=8, batch_size=64, lr=3e-3, progress=False, seed=0)
    class_means = torch.stack([x[y == c].mean(0) for c in range(10)])
    torch.manual_seed(0)
    sample_means = torch.stack(
        [model.sample(torch.full((200,), c, dtype=torch.long)).mean(0) for c in range(10)])
    assert sample_means.dtype == torch.float64
    # For every pair of labels (a, b), the difference of the sample means should point along the
    # difference of the data's class means. An unconditional model would give differences of
    # pure sampling noise (cosine ~ N(0, 1/64) for 64 pixels, so |cos| < 0.4 with probability
    # 0.9999); requiring the median cosine above 0.7 and every one above 0.3 rules that out.
    cosines = []
    for a in range(10):
        for b in range(a + 1, 10):
            cosines.append(torch.nn.functional.cosine_similarity(
                sample_means[a] - sample_means[b], class_means[a] - class_means[b], dim=0))
    cosines = torch.stack(cosines)
    assert float(cosines.median()) > 0.7 and float(cosines.min()) > 0.3, cosines


def test_labels_are_checked(dtype):
    model = ConditionalVAE(4, 3, latent_dim=2, hidden=8).to(dtype)
    x = torch.rand(5, 4, dtype=dtype)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); rows \[1\]"):
        model(x, torch.tensor([0, 3, 1, 2, 0]))
    with pytest.raises(ValueError, match="integers"):
        model(x, torch.zeros(5, dtype=dtype))
    with pytest.raises(ValueError, match="one per row"):
        model(x, torch.zeros(4, dtype=torch.long))
    assert model.sample(torch.tensor([0, 2])).dtype == dtype


def test_cli_trains_conditional_vae(tmp_path, capsys):
    code = main(["train", "--model", "conditional_vae", "--guide", "conditional", "--with-labels",
                 "--latent-dim", "4", "--hidden", "32", "--epochs", "2", "--eval-samples", "5",
                 "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0
    assert_trained_run(tmp_path / "run", capsys.readouterr().out, model="conditional_vae",
                       guide="conditional", epochs=2)
    # Without --with-labels the program gets no labels: a clear error, not a traceback.
    assert main(["train", "--model", "conditional_vae", "--guide", "conditional", "--epochs", "1",
                 "--no-progress", "--out", str(tmp_path / "bad")]) == 2
