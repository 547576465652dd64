"""The ``ppl-vae`` command line.

Subcommands are registered by ``register(subparsers)`` functions; modules that add commands are
listed in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import pyro
import torch

COMMAND_MODULES = ["ppl_vae.cli.main", "ppl_vae.cli.estimators", "ppl_vae.cli.diagnostics"]


def _option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vae", help="zoo name (see `ppl-vae models`) or file.py:name")
    p.add_argument("--guide", default="mlp", help="zoo name or file.py:name")
    p.add_argument("--data", default="digits",
                   help="digits | binary | linear_gaussian | regression | eight_schools | "
                   "mnist:DIR | file.npy/.npz/.csv")
    p.add_argument("--estimator", default="analytic", help="ELBO estimator (see `ppl-vae estimators`)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--num-particles", type=int, default=1)
    p.add_argument("--vectorize-particles", action="store_true")
    p.add_argument("--jit", action="store_true")
    p.add_argument("--latent-dim", type=int, default=None, help="passed to model and guide")
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="passed to model and guide")
    p.add_argument("--model-option", type=_option, action="append", default=[],
                   metavar="KEY=VALUE", help="extra model constructor option (JSON value)")
    p.add_argument("--guide-option", type=_option, action="append", default=[],
                   metavar="KEY=VALUE", help="extra guide constructor option (JSON value)")
    p.add_argument("--with-labels", action="store_true",
                   help="pass (x, label) batches to the programs (conditional models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--eval-samples", type=int, default=100, help="K for the evaluation's IWAE")
    p.add_argument("--devices", type=_devices, default=None,
                   help="data-parallel processes per node (int or 'auto'; see docs/scaling.md)")
    p.add_argument("--strategy", default=None,
                   help="Lightning Fabric strategy: ddp (default with --devices), ddp_spawn, ...")
    p.add_argument("--num-nodes", type=int, default=1, help="machines (torchrun / SLURM)")


def _devices(text: str):
    return text if text == "auto" else int(text)


def config_from_args(args) -> dict:
    shared = {}
    if args.latent_dim is not None:
        shared["latent_dim"] = args.latent_dim
    if args.hidden is not None:
        shared["hidden"] = args.hidden[0] if len(args.hidden) == 1 else list(args.hidden)
    return {
        "model": args.model, "guide": args.guide, "data": args.data,
        "model_options": {**shared, **dict(args.model_option)},
        "guide_options": {**shared, **dict(args.guide_option)},
        "use_labels": bool(args.with_labels),
    }


def train_run(args, out: Path):
    """Train as the arguments say and write the run folder. Returns (config, result, run data)."""
    from ppl_vae.train.loop import fit
    from ppl_vae.train.run_dir import build_programs, fit_data, load_data, save_run

    config = config_from_args(args)
    dtype = getattr(torch, args.dtype)
    dataset = load_data(args.data).to(dtype)
    # Seed before building: the networks' initial weights come from torch's global RNG, and a
    # resumed or data-parallel run must start from the same ones.
    pyro.set_rng_seed(args.seed)
    model, guide = build_programs(config, dataset)
    print(f"training {args.model} / {args.guide} on {dataset.name} "
          f"({dataset.train.shape[0]} train, {dataset.test.shape[0]} test rows) "
          f"with the {args.estimator!r} estimator -> {out}", flush=True)
    from ppl_vae.cli.estimators import print_plan

    print_plan(model, guide, fit_data(config, dataset, "train"), args.estimator, args.device)
    result = fit(
        model, guide, fit_data(config, dataset, "train"),
        validation_data=fit_data(config, dataset, "test"),
        estimator=args.estimator, num_particles=args.num_particles,
        vectorize_particles=args.vectorize_particles, jit=args.jit, epochs=args.epochs,
        batch_size=min(args.batch_size, dataset.train.shape[0]), lr=args.lr,
        optimizer=args.optimizer, device=args.device, dtype=dtype, seed=args.seed,
        progress=not args.no_progress, checkpoint_dir=out, resume=args.resume,
        early_stopping_patience=args.early_stopping,
        devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes,
    )
    if result.settings.get("global_rank", 0) != 0:
        # Data-parallel workers other than rank 0 are done: rank 0 writes and evaluates the run.
        raise SystemExit(0)
    save_run(out, config, result)
    return config, result, dataset


def _print_evaluation(run_dir: Path, num_samples: int) -> None:
    from ppl_vae.evaluation.metrics import evaluate
    from ppl_vae.train.run_dir import load_run

    run = load_run(run_dir)
    ev = evaluate(run.model, run.guide, run.data("test"), num_samples=num_samples)
    ev.to_frame().to_csv(run_dir / "evaluation.csv")
    print(f"test-set evaluation ({run.dataset.test.shape[0]} rows, K={num_samples}):")
    print(ev)


def cmd_train(args) -> int:
    out = Path(args.out)
    _, result, _ = train_run(args, out)
    print(result.history.tail(5).to_string(index=False))
    _print_evaluation(out, args.eval_samples)
    return 0


def cmd_evaluate(args) -> int:
    _print_evaluation(Path(args.run_dir), args.num_samples)
    return 0


def cmd_run(args) -> int:
    """The main job: train on the data, evaluate, and write the report."""
    out = Path(args.out)
    train_run(args, out)
    _print_evaluation(out, args.eval_samples)
    print(f"run folder: {out.resolve()}")
    from ppl_vae.reporting.run import report_run

    print("diagnosing the posterior and writing the report ...", flush=True)
    path = report_run(out)
    print(f"report: {path.resolve()}")
    return 0


def cmd_models(args) -> int:
    from ppl_vae.programs.registry import describe

    for kind in ("model", "guide"):
        print(f"{kind}s:")
        for name, line in describe(kind):
            print(f"  {name:<16} {line}")
    return 0


def cmd_estimators(args) -> int:
    from ppl_vae.estimators.registry import ESTIMATORS

    for name, spec in ESTIMATORS.items():
        print(f"  {name:<10} {spec.summary}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model/guide pair and write a run folder")
    add_training_arguments(p)
    p.add_argument("--out", required=True, help="run folder to write")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="the main job: train, evaluate and write the report")
    add_training_arguments(p)
    p.add_argument("--out", default="runs/digits")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("evaluate", help="print the evaluation table of a run folder")
    p.add_argument("run_dir")
    p.add_argument("--num-samples", type=int, default=100)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="list the model and guide zoo")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("estimators", help="list the ELBO estimators")
    p.set_defaults(func=cmd_estimators)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppl-vae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ppl-vae {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
