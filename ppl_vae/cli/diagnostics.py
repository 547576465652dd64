"""``ppl-vae diagnose RUN_DIR`` and ``ppl-vae report RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

from ppl_vae.cli.common import add_program_arguments, open_run, positive_int, require_run
from ppl_vae.diagnostics.run import diagnose_run
from ppl_vae.reporting.run import report_run
from ppl_vae.train.storage import lock_run

__all__ = ["register"]


def cmd_diagnose(args) -> int:
    run_dir = require_run(args.run_dir)
    with lock_run(run_dir):
        _, result = diagnose_run(run_dir, num_draws=args.num_draws, gaps=not args.no_gaps,
                                 calibrate=not args.no_sbc, run=open_run(args, run_dir))
    print(result.checks[["check", "value", "status"]].to_string(index=False))
    print(f"wrote {run_dir / 'diagnostics.nc'} and {run_dir / 'diagnostics.csv'}")
    return 0


def cmd_report(args) -> int:
    run_dir = require_run(args.run_dir)
    with lock_run(run_dir):
        path = report_run(run_dir, out=args.out, num_draws=args.num_draws,
                          gaps=not args.no_gaps, calibrate=not args.no_sbc,
                          run=open_run(args, run_dir))
    print(f"report: {Path(path).resolve()}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("diagnose", help="posterior diagnostics of a run folder "
                       "(writes diagnostics.nc and diagnostics.csv)")
    p.add_argument("run_dir")
    p.add_argument("--num-draws", type=positive_int, default=200, help="guide draws per data point")
    p.add_argument("--no-gaps", action="store_true", help="skip the inference-gap split")
    p.add_argument("--no-sbc", action="store_true", help="skip simulation-based calibration")
    add_program_arguments(p)
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("report", help="write a self-contained HTML report of a run folder")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="HTML file (default RUN_DIR/report.html)")
    p.add_argument("--num-draws", type=positive_int, default=200, help="guide draws per data point")
    p.add_argument("--no-gaps", action="store_true", help="skip the inference-gap split")
    p.add_argument("--no-sbc", action="store_true", help="skip simulation-based calibration")
    add_program_arguments(p)
    p.set_defaults(func=cmd_report)
