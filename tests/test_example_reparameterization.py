"""examples/reparameterization_trick.py runs end to end with tiny settings."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reparameterization_trick.py"


def test_reparameterization_trick_example(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("reparameterization_trick", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--draws", "4000", "--epochs", "1", "--variance-draws", "4",
                          "--hidden", "16", "--latent-dim", "3", "--eval-samples", "4",
                          "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert (tmp_path / "reparameterization_trick.png").stat().st_size > 10_000
    for text in ("(1)", "(2)", "(3)", "naive (detached)", "score function", "test ELBO"):
        assert text in out
    grads = result["gradients"].set_index(["estimator", "parameter"])
    # Unbiased estimators: within 4 standard errors of the exact (2 mu, 2 sigma); the naive one
    # has lost the whole gradient.
    for name in ("reparameterized", "score function"):
        assert grads.loc[name, "bias / s.e."].abs().max() < 4
    assert (grads.loc["naive (detached)", "mean"] == 0).all()
    # With the same draws, the reparameterized gradient is the less noisy one.
    assert (grads.loc["reparameterized", "std per draw"].values
            < grads.loc["score function", "std per draw"].values).all()
    assert result["change_of_variables"] > 1e-3  # KS test does not reject N(mu, sigma^2)
    assert set(result["test_elbo"]) == {"mc", "analytic"}
