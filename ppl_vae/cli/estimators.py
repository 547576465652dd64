"""``ppl-vae compare-estimators RUN_DIR``: the gradient-variance table of a trained run (the plan
table ``ppl-vae train`` prints before it starts is :func:`ppl_vae.runs.train.print_plan`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ppl_vae.cli.common import (
    add_program_arguments,
    check_output_file,
    open_run,
    positive_int,
    require_run,
)
from ppl_vae.estimators.variance import gradient_variance, snr_by_particles
from ppl_vae.runs.train import first_rows
from ppl_vae.storage.files import write_bytes

__all__ = ["register", "cmd_compare_estimators"]


def cmd_compare_estimators(args) -> int:
    check_output_file("--csv", args.csv)
    run = open_run(args, require_run(args.run_dir))
    data = run.data(args.split)
    first = _as_tuple(data)[0]
    batch = first_rows(data, min(args.batch_size, first.shape[0]))
    table = gradient_variance(
        run.model, run.guide, batch, estimators=args.estimators, num_draws=args.num_draws,
        num_particles=args.num_particles, vectorize_particles=args.vectorize_particles,
        seed=args.seed,
    )
    print(f"gradient of the loss on {batch[0].shape[0]} {args.split} rows of {run.path}, "
          f"{args.num_draws} draws per estimator and K; reference: "
          f"{table.attrs['reference']!r}")
    shown = table.drop(columns=["num_params"])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        if len(args.num_particles) > 1:
            print("encoder (guide) signal-to-noise ratio by K:")
            print(snr_by_particles(table).to_string(float_format=lambda v: f"{v:.4g}"))
    if args.csv:
        write_bytes(Path(args.csv), table.to_csv(index=False).encode())
        print(f"written: {args.csv}")
    return 0


def _as_tuple(data):
    return data if isinstance(data, tuple) else (data,)


def register(sub) -> None:
    p = sub.add_parser(
        "compare-estimators",
        help="gradient mean, variance and cost of each ELBO estimator on a trained run",
    )
    p.add_argument("run_dir", help="a run folder (written by train or run)")
    p.add_argument("--estimators", nargs="+", default=["mc", "analytic", "score", "stl"],
                   help="estimator names (see `ppl-vae estimators`), e.g. iwae dreg vimco "
                        "tracegraph")
    p.add_argument("--num-draws", type=positive_int, default=100, help="gradient estimates per estimator")
    p.add_argument("--batch-size", type=positive_int, default=128, help="rows the gradient is taken on")
    p.add_argument("--num-particles", type=positive_int, nargs="+", default=[1],
                   help="particles K (the bound's K for iwae, vimco, dreg); several values, "
                        "e.g. 1 5 50, add the encoder's SNR by K")
    p.add_argument("--vectorize-particles", action="store_true",
                   help="draw the K particles in one vectorized pass")
    p.add_argument("--split", default="train", choices=["train", "test"],
                   help="the rows the gradient is taken on")
    p.add_argument("--seed", type=int, default=0, help="seeds the gradient draws")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    add_program_arguments(p)
    p.set_defaults(func=cmd_compare_estimators)
