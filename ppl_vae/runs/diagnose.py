"""Diagnostics of a run folder, written once and read back while they are current.

Files: ``diagnostics.nc`` (the ArviZ DataTree of the exported points, netCDF4 through
h5netcdf, gzip-compressed, float32 where the data is), ``diagnostics.csv`` (one row per data
point), ``diagnostics_checks.csv`` (the verdicts), ``diagnostics_latent.csv`` (one row per
latent dimension), ``diagnostics_latent_means.csv`` (the guide mean of every point, for the
2-D view), ``diagnostics_globals.csv`` and ``diagnostics_prior_means.csv`` (the global
latents with their prior moments, E[x | z] from the prior: what the report shows),
``diagnostics_gaps.csv`` and ``diagnostics_sbc.csv`` (when computed) and
``diagnostics.json`` (the sha256 of the checkpoint they were computed from, the options,
the mutual information, the SBC settings, the seconds per phase). The tree's root attributes
carry the same ``checkpoint_sha256``.

Why netCDF and not zarr: the default tree holds 100 points (63 MB for 100 MNIST points at
200 draws before compression, mostly E[x | z]), so one self-contained file that ArviZ, xarray and
netCDF tools open directly serves better than a directory store; zarr's advantage, parallel
writes of chunks of a huge array, is not needed once the per-point checks are reduced to
tables as they go.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import warnings
from dataclasses import replace
from pathlib import Path

import pandas as pd
import xarray as xr

from ppl_vae.diagnostics.calibration import calibration_table
from ppl_vae.diagnostics.collapse import Reconstruction
from ppl_vae.diagnostics.convergence import convergence
from ppl_vae.diagnostics.gaps import inference_gaps
from ppl_vae.diagnostics.prior import prior_views
from ppl_vae.diagnostics.sbc import SBCResult, sbc, uniformity_table
from ppl_vae.diagnostics.summary import Diagnostics, diagnose, posterior_summary, verdicts
from ppl_vae.diagnostics.verdicts import Verdict, verdict_table
from ppl_vae.evaluation.export import DEFAULT_POINTS
from ppl_vae.storage.files import CorruptFileError, atomic_write, read_run_file, write_bytes
from ppl_vae.train.run_dir import load_run

__all__ = ["checkpoint_digest", "diagnose_run", "read_diagnostics", "read_tree", "write_diagnostics",
           "write_tree"]

COMPRESSION = {"zlib": True, "complevel": 4, "shuffle": True}


def write_tree(tree, path) -> Path:
    """Write a DataTree to netCDF through h5netcdf (atomically), every variable compressed
    (zlib level 4 with shuffle) and float64 kept only where the data is float64."""
    path = Path(path)
    encoding = {}
    for node in tree.subtree:
        if node.has_data:
            encoding[node.path] = {var: dict(COMPRESSION) for var in node.data_vars
                                   if node[var].ndim > 0}
    atomic_write(path, lambda tmp: tree.to_netcdf(tmp, engine="h5netcdf", encoding=encoding))
    return path


def read_tree(path):
    """Read a DataTree written by :func:`write_tree` (fully loaded, file closed)."""
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load()


def checkpoint_digest(run_dir) -> str:
    """sha256 of the run's trained parameters (``final.pt``, else ``checkpoint.pt``)."""
    path = Path(run_dir)
    ckpt = path / "final.pt" if (path / "final.pt").exists() else path / "checkpoint.pt"
    digest = hashlib.sha256()
    with open(ckpt, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _options(num_draws, points, split) -> dict:
    return {"num_draws": int(num_draws), "points": points if isinstance(points, (int, str))
            else [int(p) for p in points], "split": split}


def diagnose_run(run_dir, *, num_draws: int = 200, gaps: bool = True, calibrate: bool = True,
                 split: str = "test", points=DEFAULT_POINTS, devices=None, strategy=None,
                 progress: bool | None = None, reuse: bool = False, run=None):
    """Run :func:`ppl_vae.diagnostics.diagnose` on a run folder and write its files (see the
    module docstring), each atomically. ``run``: the already loaded
    :class:`~ppl_vae.train.run_dir.Run` (for example the programs just trained); default
    ``load_run(run_dir)``. Returns (run, Diagnostics), or (run, None) in a worker process of a
    sharded run.

    With ``reuse``, files that are current for the run (same checkpoint digest, same options)
    are read back and only what is missing is computed (for example the gaps of a run first
    diagnosed with ``gaps=False``).
    """
    run = load_run(run_dir) if run is None else run
    settings = run.config.get("settings", {})
    seed = settings.get("seed", 0)
    out, digest = Path(run_dir), checkpoint_digest(run_dir)
    options = _options(num_draws, points, split)
    result = read_diagnostics(out, digest=digest, options=options) if reuse else None
    if result is None:
        result = diagnose(run.model, run.guide, run.data(split), num_draws=num_draws, gaps=gaps,
                          calibrate=calibrate, settings=settings, seed=seed, points=points,
                          devices=devices, strategy=strategy, progress=progress,
                          history=run.history)
        if result is None:
            return run, None
    else:
        result = _completed(result, run, split, gaps=gaps, calibrate=calibrate, seed=seed,
                            stopped_by=settings.get("stopped_by"))
    _write(out, result, digest, options)
    return run, result


def write_diagnostics(run_dir, result: Diagnostics, *, digest: str, num_draws: int = 200,
                      points=DEFAULT_POINTS, split: str = "test") -> None:
    """Write ``result``'s files into ``run_dir`` (see the module docstring), each atomically.

    Parameters
    ----------
    run_dir : str or Path
        The folder.
    result : Diagnostics
        What :func:`ppl_vae.diagnose` returned.
    digest : str
        What the files are current for (:func:`checkpoint_digest` of a run folder);
        :func:`read_diagnostics` reads them back only for the same digest and options.
    num_draws, points, split
        The options ``result`` was computed with (recorded, compared when read back).
    """
    _write(Path(run_dir), result, digest, _options(num_draws, points, split))


def _completed(result: Diagnostics, run, split, *, gaps, calibrate, seed,
               stopped_by) -> Diagnostics:
    """A new Diagnostics: ``result`` (read back from the files) with what the files lacked
    computed now, each check that fails to compute recorded as "not computed: <reason>"."""
    data, changes, failed = run.data(split), {}, []
    changes["convergence"] = convergence(run.history, stopped_by=stopped_by)
    if result.global_latents is None and result.prior_means is None:
        # Files written before these views were stored: the report renders them, so add them.
        changes["global_latents"], changes["prior_means"] = prior_views(
            run.model, run.guide, data, result.tree)
    if gaps and result.gaps is None and len(result.latent):
        try:
            changes["gaps"] = inference_gaps(run.model, run.guide, data, seed=seed)
        except ValueError as exc:
            failed.append(Verdict.not_computed("Inference gaps", exc))
    if calibrate and result.sbc is None:
        try:
            changes["sbc"] = sbc(run.model, run.guide, data, seed=seed)
            changes["calibration"] = calibration_table(changes["sbc"])
        except ValueError as exc:
            failed.append(Verdict.not_computed("Simulation-based calibration", exc))
    completed = replace(result, **changes)
    # The verdicts are judged again from the numbers read back (this version's thresholds and
    # advice); rows only the file has (checks that could not run then) are kept unless they
    # were computed, or failed again, now.
    fresh = pd.concat([verdicts(completed, num_chains=1), verdict_table(failed)],
                      ignore_index=True)
    kept = result.checks[~result.checks["check"].isin(fresh["check"])]
    return replace(completed, checks=pd.concat([fresh, kept], ignore_index=True))


def _write(out: Path, result: Diagnostics, digest: str, options: dict) -> None:
    result.tree.attrs["checkpoint_sha256"] = digest
    write_tree(result.tree, out / "diagnostics.nc")
    tables = {"diagnostics.csv": result.pointwise, "diagnostics_checks.csv": result.checks,
              "diagnostics_latent.csv": result.latent, "diagnostics_gaps.csv": result.gaps,
              "diagnostics_sbc.csv": None if result.sbc is None else result.sbc.ranks,
              "diagnostics_sbc_truth.csv": None if result.sbc is None else result.sbc.truth,
              "diagnostics_sbc_mean.csv": None if result.sbc is None else result.sbc.posterior_mean,
              "diagnostics_sbc_sd.csv": None if result.sbc is None else result.sbc.posterior_sd,
              "diagnostics_latent_means.csv": result.latent_means,
              "diagnostics_globals.csv": result.global_latents,
              "diagnostics_prior_means.csv": result.prior_means}
    for name, table in tables.items():
        if table is not None:
            write_bytes(out / name, table.to_csv(index=False, float_format="%.9g").encode())
    meta = {"checkpoint_sha256": digest, "options": options,
            "mutual_information": result.mutual_information, "timings": result.timings,
            "mi_reason": result.mi_reason, "num_points": result.num_points,
            "reference_mi": result.reference_mi,
            "reconstruction": None if result.reconstruction is None else
            dataclasses.asdict(result.reconstruction),
            "sbc": None if result.sbc is None else {
                "num_draws": result.sbc.num_draws, "bins": result.sbc.bins,
                "alpha": result.sbc.alpha}}
    write_bytes(out / "diagnostics.json", json.dumps(meta, indent=1).encode())


def read_diagnostics(run_dir, *, digest: str, options: dict | None = None) -> Diagnostics | None:
    """The Diagnostics stored in a run folder, or None when a required file is missing, damaged
    (its checksum differs from the folder's manifest) or was computed from another checkpoint
    (or with other options). Optional parts (gaps, SBC) are None when their file is absent."""
    try:
        return _read(Path(run_dir), digest, options)
    except CorruptFileError as exc:
        warnings.warn(f"{exc}; the diagnostics are computed again", stacklevel=2)
        return None


def _read(out: Path, digest: str, options: dict | None) -> Diagnostics | None:
    needed = ["diagnostics.json", "diagnostics.nc", "diagnostics.csv", "diagnostics_latent.csv"]
    if not all((out / f).exists() for f in needed):
        return None
    meta = json.loads(read_run_file(out / "diagnostics.json"))
    if meta.get("checkpoint_sha256") != digest or (options is not None
                                                   and meta.get("options") != options):
        return None
    tree = read_tree(out / "diagnostics.nc")
    if tree.attrs.get("checkpoint_sha256") != digest:
        return None
    pointwise, latent = _table(out / "diagnostics.csv"), _table(out / "diagnostics_latent.csv")
    gaps = _table(out / "diagnostics_gaps.csv")
    sbc_result = None
    if meta.get("sbc") and (out / "diagnostics_sbc.csv").exists():
        s = meta["sbc"]
        ranks = _table(out / "diagnostics_sbc.csv")
        sbc_result = SBCResult(ranks, uniformity_table(ranks, s["num_draws"], s["bins"], s["alpha"]),
                               s["num_draws"], s["bins"], s["alpha"],
                               _table(out / "diagnostics_sbc_truth.csv"),
                               _table(out / "diagnostics_sbc_mean.csv"),
                               _table(out / "diagnostics_sbc_sd.csv"))
    plate = tree.attrs.get("data_plate", "data")
    first = pointwise[pointwise["chain"] == pointwise["chain"].iloc[0]]
    exported = set(tree["posterior"][plate].values) if plate in tree["posterior"].dims else set()
    worst = [p for p in first.nlargest(5, "k_hat")["point"] if p in exported]
    result = Diagnostics(tree, pointwise, latent, float(meta["mutual_information"]),
                         posterior_summary(tree, worst=worst), gaps, sbc_result,
                         timings=dict(meta.get("timings", {})),
                         latent_means=_table(out / "diagnostics_latent_means.csv"),
                         calibration=None if sbc_result is None or sbc_result.truth is None
                         else calibration_table(sbc_result),
                         reconstruction=None if meta.get("reconstruction") is None
                         else Reconstruction(**meta["reconstruction"]),
                         mi_reason=meta.get("mi_reason"), num_points=int(meta.get("num_points", 0)),
                         reference_mi=meta.get("reference_mi"),
                         global_latents=_table(out / "diagnostics_globals.csv"),
                         prior_means=_table(out / "diagnostics_prior_means.csv"))
    checks = _table(out / "diagnostics_checks.csv")
    return replace(result, checks=checks if checks is not None else verdicts(result, num_chains=1))


def _table(path: Path) -> pd.DataFrame | None:
    """A CSV of the run folder (checked against its manifest), None when absent."""
    return pd.read_csv(io.BytesIO(read_run_file(path))) if path.exists() else None
