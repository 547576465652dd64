"""Why the reparameterization trick works, measured in three steps.

1. z = mu + sigma * eps with eps ~ N(0, 1) has the distribution N(mu, sigma^2): sampling is
   moved into parameter-free noise, and z becomes a differentiable function of (mu, sigma).
2. For f(z) = z^2 and q = N(mu, sigma^2), the gradient of E_q[f] = mu^2 + sigma^2 is known,
   (2 mu, 2 sigma). Three estimators of it from the same draws:
   - naive: backpropagate through a sample whose path to (mu, sigma) is cut. The term
     integral f(z) grad q(z) dz is lost, and here that is the whole gradient: it says 0;
   - score function: f(z) grad log q(z), unbiased but noisy;
   - reparameterized: grad f(mu + sigma * eps), unbiased and much less noisy.
3. Kingma & Welling's estimators A ("mc": Monte Carlo over the whole ELBO) and B ("analytic":
   closed-form KL, Monte Carlo reconstruction) on the digits VAE: gradient variance at the
   same parameters, and test ELBO after the same number of steps.

    python examples/reparameterization_trick.py --out figures/
    python examples/reparameterization_trick.py --epochs 1 --draws 2000 --variance-draws 5 \\
        --hidden 32 --out /tmp/rt      # a quick run
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

import ppl_vae  # noqa: E402
from ppl_vae.guides import MLPEncoder  # noqa: E402
from ppl_vae.models import VAE  # noqa: E402

MU, SIGMA = 1.5, 0.8


def change_of_variables(num_draws: int, gen: torch.Generator) -> dict:
    """Step 1: draws of mu + sigma * eps against N(mu, sigma^2)."""
    eps = torch.randn(num_draws, generator=gen, dtype=torch.float64)
    z = MU + SIGMA * eps
    ks = stats.kstest(z.numpy(), "norm", args=(MU, SIGMA))
    print(f"(1) z = {MU} + {SIGMA} * eps, {num_draws} draws: mean {float(z.mean()):.4f} "
          f"(mu = {MU}), std {float(z.std()):.4f} (sigma = {SIGMA}); "
          f"Kolmogorov-Smirnov against N(mu, sigma^2): p = {ks.pvalue:.3f}")
    return {"z": z, "ks_pvalue": float(ks.pvalue)}


def per_draw_gradients(num_draws: int, gen: torch.Generator) -> dict:
    """Step 2: one gradient estimate per draw for each estimator, shape (num_draws, 2)."""
    eps = torch.randn(num_draws, generator=gen, dtype=torch.float64)

    def params():
        # One copy of (mu, sigma) per draw, so that autograd returns per-draw gradients.
        mu = torch.full((num_draws,), MU, dtype=torch.float64, requires_grad=True)
        sigma = torch.full((num_draws,), SIGMA, dtype=torch.float64, requires_grad=True)
        return mu, sigma

    out = {}
    mu, sigma = params()
    z = mu + sigma * eps
    out["reparameterized"] = torch.stack(torch.autograd.grad((z**2).sum(), (mu, sigma)), 1)

    mu, sigma = params()
    z = (mu + sigma * eps).detach()
    log_q = torch.distributions.Normal(mu, sigma).log_prob(z)
    out["score function"] = torch.stack(torch.autograd.grad((z**2 * log_q).sum(), (mu, sigma)), 1)

    mu, sigma = params()
    z = (mu + sigma * eps).detach()  # the path from (mu, sigma) to z is cut
    f = z**2
    # Backpropagation finds no path from f back to (mu, sigma): every draw's gradient is 0.
    assert not f.requires_grad
    out["naive (detached)"] = torch.zeros(num_draws, 2, dtype=torch.float64)
    return out


def gradient_table(draws: dict) -> pd.DataFrame:
    exact = {"mu": 2 * MU, "sigma": 2 * SIGMA}
    rows = []
    for name, g in draws.items():
        n = g.shape[0]
        for j, param in enumerate(("mu", "sigma")):
            mean, std = float(g[:, j].mean()), float(g[:, j].std())
            se = std / n**0.5
            rows.append({
                "estimator": name, "parameter": param, "exact": exact[param], "mean": mean,
                "std per draw": std,
                "bias / s.e.": (mean - exact[param]) / se if se > 0
                else math.copysign(math.inf, mean - exact[param]),
            })
    return pd.DataFrame(rows)


def estimators_a_and_b(args) -> tuple[pd.DataFrame, dict]:
    """Step 3: train with each of A and B, same seed and steps; gradient variance at A's end."""
    data = ppl_vae.datasets.load_digits()
    batch = data.train[: args.batch_size]
    test_elbo, table = {}, None
    for estimator in ("mc", "analytic"):
        pyro.clear_param_store()
        model = VAE(data.obs_dim, args.latent_dim, hidden=args.hidden)
        guide = MLPEncoder(data.obs_dim, args.latent_dim, hidden=args.hidden)
        result = ppl_vae.fit(model, guide, data.train, estimator=estimator, epochs=args.epochs,
                             batch_size=args.batch_size, seed=args.seed, progress=False)
        ev = ppl_vae.evaluate(model, guide, data.test, num_samples=args.eval_samples)
        test_elbo[estimator] = {"test_elbo": ev["elbo"], "steps": int(result.history["steps"].sum())}
        if table is None:
            table = ppl_vae.gradient_variance(model, guide, batch, estimators=["mc", "analytic"],
                                              num_draws=args.variance_draws, seed=args.seed)
    return table, test_elbo


def figure(step1, draws, table, test_elbo, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.hist(step1["z"].numpy(), bins=60, density=True, alpha=0.6, label="mu + sigma * eps")
    grid = torch.linspace(MU - 4 * SIGMA, MU + 4 * SIGMA, 200, dtype=torch.float64)
    ax.plot(grid, torch.distributions.Normal(MU, SIGMA).log_prob(grid).exp(), "k",
            label="N(mu, sigma^2) density")
    ax.set_title("(1) a deterministic map of N(0, 1) noise")
    ax.legend(fontsize=8)

    ax = axes[1]
    names = list(draws)
    ax.boxplot([draws[n][:, 0].numpy() for n in names], showfliers=False, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
    ax.axhline(2 * MU, color="r", ls="--", label=f"exact d/dmu E[z^2] = {2 * MU}")
    ax.set_title("(2) per-draw estimates of d/dmu E[z^2] (triangle: mean)")
    ax.legend(fontsize=8)

    ax = axes[2]
    guide_rows = table[table.group != "all"]
    labels = [f"{r.estimator}\n{r.group}" for r in guide_rows.itertuples()]
    ax.bar(labels, guide_rows["total_variance"], color=["C0", "C0", "C1", "C1"][: len(labels)])
    ax.set_yscale("log")
    ax.set_ylabel("total gradient variance")
    elbo_text = ", ".join(f"{k}: {v['test_elbo']:.2f}" for k, v in test_elbo.items())
    ax.set_title(f"(3) digits VAE, A = mc, B = analytic\ntest ELBO {elbo_text}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10_000, help="draws in steps 1 and 2")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs in step 3")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--variance-draws", type=int, default=200,
                        help="gradient estimates per estimator in step 3")
    parser.add_argument("--eval-samples", type=int, default=100, help="K of the test evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=".", help="folder for reparameterization_trick.png")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    step1 = change_of_variables(args.draws, gen)
    draws = per_draw_gradients(args.draws, gen)
    grads = gradient_table(draws)
    print(f"\n(2) gradient of E[z^2] under N({MU}, {SIGMA}^2), {args.draws} draws each:")
    print(grads.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    table, test_elbo = estimators_a_and_b(args)
    print(f"\n(3) digits VAE, gradient variance at the parameters estimator A reached "
          f"({args.variance_draws} draws each):")
    cols = ["estimator", "group", "mean_norm", "total_variance", "snr", "variance_ratio",
            "agrees_in_mean", "seconds_per_estimate"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for name, v in test_elbo.items():
        print(f"    test ELBO after {v['steps']} steps with {name!r}: {v['test_elbo']:.3f}")
    path = out / "reparameterization_trick.png"
    figure(step1, draws, table, test_elbo, path)
    print(f"\nfigure: {path}")
    return {"change_of_variables": step1["ks_pvalue"], "gradients": grads,
            "variance": table, "test_elbo": test_elbo, "figure": path}


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
