"""Train the zoo VAE on MNIST-format IDX files from a local folder and write its report.

Nothing is downloaded: DIR must hold the four files of MNIST or Fashion-MNIST
(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte, each optionally .gz).

    python examples/vae_mnist.py ~/data/mnist --out runs/mnist
    python examples/vae_mnist.py ~/data/mnist --epochs 20 --kl-warmup-epochs 5 --max-test 2000

Training runs until the validation ELBO stops improving (``epochs="auto"``, bounded by
``--max-epochs`` and ``--time-budget``); the report (``OUT/report.html``) shows the verdicts,
the reconstructions and what to do next when a check fails.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import ppl_vae
from ppl_vae.data.datasets import load_mnist
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE


def _epochs(text: str):
    return text if text == "auto" else int(text)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="folder with the four MNIST IDX files")
    parser.add_argument("--out", default="runs/mnist", help="folder for report.html")
    parser.add_argument("--epochs", type=_epochs, default="auto")
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--kl-warmup-epochs", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--max-test", type=int, default=1000,
                        help="test rows used for the report's diagnostics (O(N^2) MI, SBC)")
    parser.add_argument("--no-gaps", action="store_true", help="skip the inference-gap split")
    parser.add_argument("--no-sbc", action="store_true", help="skip simulation-based calibration")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data = load_mnist(args.directory)
    test = data.test[: args.max_test]
    torch.manual_seed(args.seed)
    model = VAE(data.obs_dim, args.latent_dim, hidden=args.hidden)
    guide = MLPEncoder(data.obs_dim, args.latent_dim, hidden=args.hidden)
    warmup = [ppl_vae.KLWarmup(args.kl_warmup_epochs)] if args.kl_warmup_epochs else []
    result = ppl_vae.fit(
        model, guide, data.train, validation_data=test, epochs=args.epochs,
        batch_size=min(args.batch_size, len(data.train)), lr=args.lr, seed=args.seed,
        progress=False, objective=ppl_vae.Objective(terms=warmup),
        loop=ppl_vae.Loop(max_epochs=args.max_epochs, patience=args.patience,
                          time_budget=args.time_budget, lr_schedule="plateau"),
    )
    evaluation = ppl_vae.evaluate(model, guide, test, num_samples=100)
    out = Path(args.out)
    labels = None if data.test_labels is None else data.test_labels[: args.max_test].numpy()
    path = ppl_vae.report(result=result, data=test, out=out / "report.html", evaluation=evaluation,
                          image_shape=data.image_shape, labels=labels,
                          title=f"ppl-vae report: VAE on {args.directory}",
                          gaps=not args.no_gaps, calibrate=not args.no_sbc)
    summary = {"report": str(path), "epochs": len(result.history),
               "stopped_by": result.settings["stopped_by"], **dict(evaluation)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(result.history.tail().to_string(index=False))
    print(evaluation)
    print(f"report: {path.resolve()}")
    return summary


if __name__ == "__main__":
    main()
