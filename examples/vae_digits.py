"""Train the zoo VAE on scikit-learn's bundled digits and evaluate it on the held-out split.

    python examples/vae_digits.py                      # 30 epochs, analytic KL
    python examples/vae_digits.py --estimator mc --epochs 5
"""

from __future__ import annotations

import argparse

import ppl_vae
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", default="analytic")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data = ppl_vae.datasets.load_digits()
    model = VAE(data.obs_dim, args.latent_dim, hidden=args.hidden)
    guide = MLPEncoder(data.obs_dim, args.latent_dim, hidden=args.hidden)
    result = ppl_vae.fit(
        model, guide, data.train, validation_data=data.test, estimator=args.estimator,
        epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, seed=args.seed,
    )
    print(result.history.tail().to_string(index=False))
    ev = ppl_vae.evaluate(model, guide, data.test, num_samples=args.eval_samples)
    print(f"\ntest set, estimator {args.estimator!r}, {args.epochs} epochs:")
    print(ev)
    return ev


if __name__ == "__main__":
    main()
