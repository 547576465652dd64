"""Diagnostics of a run folder: ``diagnostics.nc`` (the ArviZ DataTree), ``diagnostics.csv``
(one row per data point) and ``diagnostics_checks.csv`` (the verdicts)."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from ppl_vae.diagnostics.summary import diagnose
from ppl_vae.train.checkpoint import atomic_write
from ppl_vae.train.run_dir import load_run
from ppl_vae.train.storage import write_bytes

__all__ = ["diagnose_run", "read_tree", "write_tree"]


def write_tree(tree, path) -> Path:
    """Write a DataTree to netCDF through h5netcdf (atomically)."""
    path = Path(path)
    atomic_write(path, lambda tmp: tree.to_netcdf(tmp, engine="h5netcdf"))
    return path


def read_tree(path):
    """Read a DataTree written by :func:`write_tree` (fully loaded, file closed)."""
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load()


def diagnose_run(run_dir, *, num_draws: int = 200, gaps: bool = True, calibrate: bool = True,
                 split: str = "test", run=None):
    """Run :func:`ppl_vae.diagnostics.diagnose` on a run folder and write ``diagnostics.nc``
    (the ArviZ DataTree), ``diagnostics.csv`` (one row per data point) and
    ``diagnostics_checks.csv`` (the verdicts), atomically. ``run``: the already loaded
    :class:`~ppl_vae.train.run_dir.Run` (for example the programs just trained); default
    ``load_run(run_dir)``. Returns (run, Diagnostics)."""
    run = load_run(run_dir) if run is None else run
    settings = run.config.get("settings", {})
    result = diagnose(run.model, run.guide, run.data(split), num_draws=num_draws, gaps=gaps,
                      calibrate=calibrate, settings=settings, seed=settings.get("seed", 0),
                      history=run.history)
    out = Path(run_dir)
    write_tree(result.tree, out / "diagnostics.nc")
    table = result.pointwise.copy()
    write_bytes(out / "diagnostics.csv", table.to_csv(index=False).encode())
    write_bytes(out / "diagnostics_checks.csv", result.checks.to_csv(index=False).encode())
    return run, result
