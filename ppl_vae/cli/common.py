"""Pieces shared by the ``ppl-vae`` command modules: argument types, and opening a run folder
with the user programs named on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from ppl_vae.storage.files import MANIFEST_NAME
from ppl_vae.train.run_dir import load_run

__all__ = ["whole_number", "positive_int", "add_program_arguments", "require_run", "open_run",
           "check_output_file"]


def whole_number(minimum: int, maximum: int | None = None):
    """argparse type: a whole number in ``[minimum, maximum]`` (``1.5`` is refused, not
    truncated)."""
    expected = f"a whole number >= {minimum}" if maximum is None else \
        f"a whole number in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = whole_number(1)


def add_program_arguments(p: argparse.ArgumentParser) -> None:
    """``--model`` / ``--guide`` / ``--data`` for commands that read a run folder: a run trained
    with a user program or data function needs it named again (it is never imported because a
    config.json names it)."""
    p.add_argument("--model", default=None,
                   help="the run's user model file.py:name, checked against its recorded "
                   "sha256 (default: the zoo model config.json names)")
    p.add_argument("--guide", default=None,
                   help="the run's user guide file.py:name (default: the zoo guide "
                   "config.json names)")
    p.add_argument("--data", default=None,
                   help="the run's data function file.py:function, checked against its "
                   "recorded sha256 (default: the data config.json names)")


def require_run(run_dir) -> Path:
    """``run_dir`` as a Path, or ``ValueError`` when it is not a run folder (checked before
    anything, even the lock file, is written in it)."""
    path = Path(run_dir)
    if not (path / "config.json").exists() and not (path / "config.json").is_symlink():
        raise ValueError(f"{path} is not a ppl-vae run folder (no config.json)")
    return path


def open_run(args, run_dir: Path):
    """Load the run, with the user programs named on this command line (if any)."""
    return load_run(run_dir, model=args.model, guide=args.guide, data=args.data)


def check_output_file(option: str, path, *, own_run: Path | None = None,
                      default: str | None = None) -> None:
    """Refuse an output file ``path`` (given as ``option``) inside a run folder, its own or
    another's: it would replace that run's trained parameters, config or manifest (the
    manifest would even record the new bytes, so ``verify`` would say ok). ``own_run /
    default`` (the command's own output, for example ``RUN/report.html``) is allowed. Checked
    before anything, even the lock file, is written."""
    if path is None:
        return
    target = Path(path).resolve()
    folder = target.parent
    if not any((folder / name).exists() or (folder / name).is_symlink()
               for name in ("config.json", MANIFEST_NAME)):
        return
    if own_run is not None and default is not None and target == (own_run / default).resolve():
        return
    own = f" (or leave {option} out: {own_run / default})" if default is not None else ""
    raise ValueError(f"{option} {path}: {folder} is a ppl-vae run folder, whose files only its "
                     f"run writes; choose a file outside it{own}")
