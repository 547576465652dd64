"""``ppl-vae diagnose RUN_DIR`` and ``ppl-vae report RUN_DIR``."""

from __future__ import annotations

import json
from pathlib import Path

from ppl_vae.cli.common import (
    add_program_arguments,
    check_output_file,
    open_run,
    positive_int,
    require_run,
)
from ppl_vae.diagnostics.verdicts import verdict_table
from ppl_vae.evaluation.export import DEFAULT_POINTS
from ppl_vae.runs import diagnose_run, report_run, writing

__all__ = ["register", "points_argument"]


def points_argument(text: str):
    """``--points``: ``all``, a number, or comma-separated indices."""
    if text == "all":
        return text
    if "," in text or text.startswith("["):
        return [int(v) for v in json.loads(text if text.startswith("[") else f"[{text}]")]
    return int(text)


def _devices(text: str):
    return text if text == "auto" else int(text)


def cmd_diagnose(args) -> int:
    run_dir = require_run(args.run_dir)
    with writing(run_dir, devices=args.devices, strategy=args.strategy):
        _, result = diagnose_run(run_dir, num_draws=args.num_draws, gaps=not args.no_gaps,
                                 calibrate=not args.no_sbc, points=args.points,
                                 devices=args.devices, strategy=args.strategy,
                                 progress=False if args.no_progress else None,
                                 run=open_run(args, run_dir))
    if result is None:
        raise SystemExit(0)  # a worker process of a sharded run: rank 0 reports
    table = verdict_table(result.verdicts)  # typed, then written as the table's strings
    print(table[["check", "value", "status"]].to_string(index=False))
    print("seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    print(f"wrote {run_dir / 'diagnostics.nc'} and {run_dir / 'diagnostics.csv'}")
    return 0


def cmd_report(args) -> int:
    run_dir = require_run(args.run_dir)
    check_output_file("--out", args.out, own_run=run_dir, default="report.html")
    with writing(run_dir):
        path = report_run(run_dir, out=args.out, num_draws=args.num_draws,
                          gaps=not args.no_gaps, calibrate=not args.no_sbc, points=args.points,
                          progress=False if args.no_progress else None,
                          run=open_run(args, run_dir))
    print(f"report: {Path(path).resolve()}")
    return 0


def _common(p) -> None:
    p.add_argument("run_dir", help="a run folder (written by train or run)")
    p.add_argument("--num-draws", type=positive_int, default=200,
                   help="guide draws per data point")
    p.add_argument("--no-gaps", action="store_true", help="skip the inference-gap split")
    p.add_argument("--no-sbc", action="store_true", help="skip simulation-based calibration")
    p.add_argument("--points", type=points_argument, default=DEFAULT_POINTS,
                   help="data points whose draws diagnostics.nc keeps: a number (chosen at "
                   "random, reproducibly), 'all', or indices '3,17,42' (per-point tables "
                   "always cover every point)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_program_arguments(p)


def register(sub) -> None:
    p = sub.add_parser("diagnose", help="posterior diagnostics of a run folder "
                       "(writes diagnostics.nc and diagnostics.csv)")
    _common(p)
    p.add_argument("--devices", type=_devices, default=None,
                   help="processes to shard the data points over (Lightning Fabric, CPU; "
                   "default: one process)")
    p.add_argument("--strategy", default=None,
                   help="Lightning Fabric strategy: ddp or ddp_spawn (default: ddp when "
                   "--devices is given)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("report", help="write a self-contained HTML report of a run folder "
                       "(reusing its diagnostics files when they are current)")
    _common(p)
    p.add_argument("--out", default=None, help="HTML file (default RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)
