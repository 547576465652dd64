"""A run folder's lifecycle around a training job: refuse to write over a run unless told to
resume or overwrite it, set the replaced run aside until the new one has written a file, refuse
to resume with other settings, and write the end of the run.

The folder's format (``config.json``, the checkpoints, the manifest) is what ``fit`` writes and
:func:`ppl_vae.train.run_dir.load_run` reads; this module only decides when a job may write it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ppl_vae.storage.files import MANIFEST_NAME, run_file_names
from ppl_vae.train.checkpoint import save_checkpoint, save_history
from ppl_vae.train.run_dir import RUN_FILES, read_config, write_config

__all__ = ["RUN_KEYS", "SET_ASIDE", "check_same_run", "prepare_run_folder", "replacing_run",
           "save_run"]

# config.json keys that define the run: resuming with another value of one is refused.
RUN_KEYS = ("model", "guide", "data", "model_options", "guide_options", "use_labels",
            "model_sha256", "guide_sha256", "data_sha256")
# Where --overwrite keeps the run it replaces until the new one has written a file.
SET_ASIDE = ".ppl-vae-replaced"


def check_same_run(run_dir, config: dict) -> None:
    """Refuse to resume ``run_dir`` with other programs, data or options than it was started
    with, listing each difference."""
    if not (Path(run_dir) / "config.json").exists():
        return
    old = read_config(run_dir)
    diffs = [f"{key}: {old.get(key)!r} -> {config.get(key)!r}" for key in RUN_KEYS
             if old.get(key) != config.get(key)]
    if diffs:
        raise ValueError(f"--resume: {run_dir} was started with other settings ("
                         + "; ".join(diffs) + "); resume with the same ones, or use --overwrite "
                         "or another --out for a new run")


def prepare_run_folder(out, *, resume: bool, overwrite: bool) -> None:
    """Refuse to write a new run over an existing one unless ``resume`` (continue it) or
    ``overwrite`` (its files are set aside by :func:`replacing_run`)."""
    out = Path(out)
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: give one")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    present = [n for n in (*RUN_FILES, MANIFEST_NAME) if (out / n).exists() or (out / n).is_symlink()]
    if not present or resume:
        return
    if not overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(present)}): pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out")


@contextlib.contextmanager
def replacing_run(out, overwrite: bool):
    """``--overwrite``: the run files in ``out`` (nothing else) are moved into the hidden
    folder :data:`SET_ASIDE` while the command runs. When it fails before the new run wrote a
    file (refused settings, bad data, a program that fails its checks), they are moved back,
    byte for byte; otherwise they are deleted (the new run, or its resumable checkpoint, is
    what the folder holds)."""
    out = Path(out)
    names = run_file_names(out, RUN_FILES) if overwrite else []
    if not names:
        yield
        return
    aside = out / SET_ASIDE
    if aside.exists() or aside.is_symlink():
        raise ValueError(f"{aside} holds a run set aside by an --overwrite that was killed: move "
                         f"its files back into {out} (or delete it), then run again")
    aside.mkdir()
    for name in names:
        os.replace(out / name, aside / name)
    try:
        yield
    except BaseException:
        if not run_file_names(out, RUN_FILES):
            for name in names:
                os.replace(aside / name, out / name)
            aside.rmdir()
            raise
        shutil.rmtree(aside)
        raise
    shutil.rmtree(aside)


def save_run(out: Path, config: dict, result) -> None:
    """Write the end of a run: ``config.json`` with the settings ``fit`` used, ``history.csv``
    and ``final.pt``."""
    out = Path(out)
    write_config(out, {**config, "settings": result.settings})
    save_history(out, result.history.to_dict("records"))
    save_checkpoint(out / "final.pt", {"params": result.params,
                                       "history": result.history.to_dict("records")})
