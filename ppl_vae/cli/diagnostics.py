"""``ppl-vae diagnose RUN_DIR`` and ``ppl-vae report RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

from ppl_vae.diagnostics.run import diagnose_run
from ppl_vae.reporting.run import report_run

__all__ = ["register"]


def cmd_diagnose(args) -> int:
    run_dir = Path(args.run_dir)
    _, result = diagnose_run(run_dir, num_draws=args.num_draws, gaps=not args.no_gaps,
                             calibrate=not args.no_sbc)
    print(result.checks[["check", "value", "status"]].to_string(index=False))
    print(f"wrote {run_dir / 'diagnostics.nc'} and {run_dir / 'diagnostics.csv'}")
    return 0


def cmd_report(args) -> int:
    path = report_run(Path(args.run_dir), out=args.out, num_draws=args.num_draws,
                      gaps=not args.no_gaps, calibrate=not args.no_sbc)
    print(f"report: {Path(path).resolve()}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("diagnose", help="posterior diagnostics of a run folder "
                       "(writes diagnostics.nc and diagnostics.csv)")
    p.add_argument("run_dir")
    p.add_argument("--num-draws", type=int, default=200, help="guide draws per data point")
    p.add_argument("--no-gaps", action="store_true", help="skip the inference-gap split")
    p.add_argument("--no-sbc", action="store_true", help="skip simulation-based calibration")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("report", help="write a self-contained HTML report of a run folder")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="HTML file (default RUN_DIR/report.html)")
    p.add_argument("--num-draws", type=int, default=200, help="guide draws per data point")
    p.add_argument("--no-gaps", action="store_true", help="skip the inference-gap split")
    p.add_argument("--no-sbc", action="store_true", help="skip simulation-based calibration")
    p.set_defaults(func=cmd_report)
