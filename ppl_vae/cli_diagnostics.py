"""``ppl-vae diagnose RUN_DIR`` and ``ppl-vae report RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["register", "diagnose_run", "read_tree", "write_tree"]


def write_tree(tree, path) -> Path:
    """Write a DataTree to netCDF through h5netcdf (atomically)."""
    from ppl_vae.checkpoint import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: tree.to_netcdf(tmp, engine="h5netcdf"))
    return path


def read_tree(path):
    """Read a DataTree written by :func:`write_tree` (fully loaded, file closed)."""
    import xarray as xr

    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load()


def diagnose_run(run_dir, *, num_draws: int = 200, gaps: bool = True, calibrate: bool = True,
                 split: str = "test"):
    """Run :func:`ppl_vae.diagnostics.diagnose` on a run folder and write ``diagnostics.nc``
    (the ArviZ DataTree), ``diagnostics.csv`` (one row per data point) and
    ``diagnostics_checks.csv`` (the verdicts). Returns (run, Diagnostics)."""
    from ppl_vae.diagnostics import diagnose
    from ppl_vae.run_dir import load_run

    run = load_run(run_dir)
    settings = run.config.get("settings", {})
    result = diagnose(run.model, run.guide, run.data(split), num_draws=num_draws, gaps=gaps,
                      calibrate=calibrate, settings=settings, seed=settings.get("seed", 0))
    out = Path(run_dir)
    write_tree(result.tree, out / "diagnostics.nc")
    table = result.pointwise.copy()
    table.to_csv(out / "diagnostics.csv", index=False)
    result.checks.to_csv(out / "diagnostics_checks.csv", index=False)
    return run, result


def cmd_diagnose(args) -> int:
    run_dir = Path(args.run_dir)
    _, result = diagnose_run(run_dir, num_draws=args.num_draws, gaps=not args.no_gaps,
                             calibrate=not args.no_sbc)
    print(result.checks[["check", "value", "status"]].to_string(index=False))
    print(f"wrote {run_dir / 'diagnostics.nc'} and {run_dir / 'diagnostics.csv'}")
    return 0


def cmd_report(args) -> int:
    from ppl_vae.report import report_run

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
