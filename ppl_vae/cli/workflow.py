"""``ppl-vae latents RUN --out FILE``, ``ppl-vae compare RUN RUN ...`` and the training commands'
``--logger csv|tensorboard[:DIR]``."""

from __future__ import annotations

import argparse
import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd

from ppl_vae.cli.common import add_program_arguments, open_run, positive_int, require_run
from ppl_vae.diagnostics.compare import compare
from ppl_vae.evaluation.latents import latents
from ppl_vae.storage.files import MANIFEST_NAME, write_bytes
from ppl_vae.train.loggers import fabric_loggers

__all__ = ["register", "add_logger_argument", "make_loggers", "check_output"]

FORMATS = (".csv", ".npy", ".npz", ".parquet")


def _logger_spec(text: str) -> tuple[str, str | None]:
    kind, _, folder = text.partition(":")
    if kind not in ("csv", "tensorboard"):
        raise argparse.ArgumentTypeError(f"expected csv or tensorboard (optionally :DIR), got "
                                         f"{text!r}")
    return kind, folder or None


def add_logger_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--logger", type=_logger_spec, action="append", default=[],
                   metavar="csv|tensorboard[:DIR]",
                   help="log every epoch's ELBOs, KL, learning rate and KL weight, and the "
                   "settings, with Lightning's CSV or TensorBoard logger into DIR (default "
                   "OUT/logs); repeatable; needs pip install 'ppl-vae[loggers]'")


def _fabric_loggers():
    module = fabric_loggers()
    if module is None:
        raise ValueError("--logger needs Lightning Fabric: pip install 'ppl-vae[loggers]'")
    return module


def make_loggers(specs, out: Path) -> list:
    """Lightning loggers for ``--logger`` (the hyperparameter-writing CSV logger of
    ``lightning.pytorch`` where installed, else Fabric's)."""
    loggers = []
    for kind, folder in specs:
        root = Path(folder) if folder else Path(out) / "logs"
        if kind == "tensorboard":
            if importlib.util.find_spec("tensorboard") is None and \
                    importlib.util.find_spec("tensorboardX") is None:
                raise ValueError("--logger tensorboard needs TensorBoard: pip install "
                                 "'ppl-vae[loggers]'")
            loggers.append(_fabric_loggers().TensorBoardLogger(root, name="ppl-vae"))
        elif importlib.util.find_spec("lightning") is not None and \
                importlib.util.find_spec("lightning.pytorch") is not None:
            from lightning.pytorch.loggers import CSVLogger

            loggers.append(CSVLogger(root, name="ppl-vae"))
        else:
            loggers.append(_fabric_loggers().CSVLogger(root, name="ppl-vae"))
    return loggers


def check_output(path, *, overwrite: bool, argument: str = "--out") -> Path:
    """A file to write: not inside a run folder (its files are the run's), not an existing file
    unless ``overwrite``, with a suffix in :data:`FORMATS` for latents."""
    path = Path(path)
    for folder in [path.parent.resolve(), *path.parent.resolve().parents]:
        if (folder / "config.json").exists() or (folder / MANIFEST_NAME).exists():
            raise ValueError(f"{argument} {path} is inside the run folder {folder}: write it "
                             "elsewhere (a run folder holds only the run's files)")
    if path.is_dir():
        raise ValueError(f"{argument} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{argument} {path} exists: pass --overwrite to replace it")
    return path


def _frame(values: dict, draws: bool) -> pd.DataFrame:
    """One column per site coordinate (``z_0``, ``z_1``, ...); with draws, a ``draw`` and a
    ``point`` column (long format)."""
    columns = {}
    for site, tensor in values.items():
        array = tensor.detach().cpu().numpy()
        lead = 2 if draws else 1
        flat = array.reshape(*array.shape[:lead], -1)
        if draws:
            flat = flat.reshape(-1, flat.shape[-1])
        width = flat.shape[-1]
        for j in range(width):
            columns[site if width == 1 and array.ndim == lead else f"{site}_{j}"] = flat[:, j]
    frame = pd.DataFrame(columns)
    if draws:
        k, n = next(iter(values.values())).shape[:2]
        frame.insert(0, "point", np.tile(np.arange(n), k))
        frame.insert(0, "draw", np.repeat(np.arange(k), n))
    else:
        frame.insert(0, "point", np.arange(len(frame)))
    return frame


def _encode(values: dict, suffix: str, draws: bool) -> bytes:
    buffer = io.BytesIO()
    if suffix == ".npy":
        if len(values) != 1:
            raise ValueError(f"--out .npy holds one array; the guide has sites {list(values)}: "
                             "use .npz, or --sites SITE")
        np.save(buffer, next(iter(values.values())).cpu().numpy())
    elif suffix == ".npz":
        np.savez(buffer, **{k: v.cpu().numpy() for k, v in values.items()})
    elif suffix == ".csv":
        buffer.write(_frame(values, draws).to_csv(index=False).encode())
    else:
        if importlib.util.find_spec("pyarrow") is None and \
                importlib.util.find_spec("fastparquet") is None:
            raise ValueError("--out .parquet needs pyarrow: pip install pyarrow (or "
                             "pip install 'ppl-vae[parquet]'), or write .csv / .npz")
        _frame(values, draws).to_parquet(buffer, index=False)
    return buffer.getvalue()


def cmd_latents(args) -> int:
    out = Path(args.out)
    if out.suffix not in FORMATS:
        raise ValueError(f"--out {out}: the file type is read from the suffix: one of "
                         f"{', '.join(FORMATS)}")
    check_output(out, overwrite=args.overwrite)
    run = open_run(args, require_run(args.run_dir))
    values = latents(run.model, run.guide, run.data(args.split), sites=args.sites,
                     num_draws=args.num_draws, seed=args.seed)
    write_bytes(out, _encode(values, out.suffix, args.num_draws > 0), manifest=False)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in values.items())
    print(f"latents of the {args.split} split ({shapes}) -> {out}")
    return 0


def cmd_compare(args) -> int:
    if args.figure is not None:
        check_output(args.figure, overwrite=args.overwrite, argument="--figure")
    for run_dir in args.run_dirs:
        require_run(run_dir)
    result = compare(list(args.run_dirs), model=args.model, guide=args.guide,
                     num_samples=args.num_samples, seed=args.seed)
    print(f"held-out comparison (K={args.num_samples}; diff: paired, against "
          f"{result.table.index[0]}):")
    print(result)
    if args.figure is not None:
        fig = result.figure()
        buffer = io.BytesIO()
        fig.savefig(buffer, format=Path(args.figure).suffix.lstrip(".") or "png", dpi=120)
        write_bytes(Path(args.figure), buffer.getvalue(), manifest=False)
        print(f"figure: {args.figure}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("latents", help="write the guide's per-point latent means (or draws) "
                       "of a run's data to a .csv, .npy, .npz or .parquet file")
    p.add_argument("run_dir", help="a run folder (written by train, run or FitResult.save)")
    p.add_argument("--out", required=True, help="file to write; its suffix picks the format "
                   "(.csv, .npy, .npz, .parquet); never inside a run folder")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="which split of the run's data (default: test)")
    p.add_argument("--sites", nargs="+", default=None, help="local latent sites (default: all)")
    p.add_argument("--num-draws", type=int, default=0,
                   help="0 (default): the guide mean per point; K: K draws per point")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_program_arguments(p)
    p.set_defaults(func=cmd_latents)

    p = sub.add_parser("compare", help="compare run folders on their shared held-out data: "
                       "log p(x) per point, paired differences, ELBO, KL, active units")
    p.add_argument("run_dirs", nargs="+", metavar="RUN",
                   help="two or more run folders, compared on the same held-out points")
    p.add_argument("--num-samples", type=positive_int, default=100,
                   help="importance samples per point for log p(x) (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    p.add_argument("--figure", default=None, help="also write the comparison figure (.png, "
                   ".pdf, .svg)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --figure")
    add_program_arguments(p)
    p.set_defaults(func=cmd_compare)
