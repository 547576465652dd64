"""A run folder: ``config.json`` (how to rebuild the programs and the data), ``history.csv``,
``checkpoint.pt`` (every epoch), ``final.pt`` (trained parameters) and ``manifest.json`` (the
sha256 of each), plus what ``evaluate``, ``diagnose`` and ``report`` add.

Everything written here is read back by ``ppl-vae evaluate``, ``diagnose``, ``report`` and
``compare-estimators`` through :func:`load_run`. A run folder is data only: zoo programs are
recorded by their entry-point name, user programs by ``file.py:name`` and the file's sha256, and
a user program is imported only when the caller names it again (:func:`load_run`'s ``model`` /
``guide``, the CLI's ``--model`` / ``--guide``), never because a ``config.json`` says so.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyro
import torch

from ppl_vae.data import datasets
from ppl_vae.data.tensors import as_tensors
from ppl_vae.programs.analysis import PROBE_ROWS
from ppl_vae.programs.digest import program_digests, programs_differences
from ppl_vae.programs.registry import build, file_sha256, is_file_spec
from ppl_vae.programs.util import max_plate_nesting
from ppl_vae.storage.files import read_run_file, write_bytes
from ppl_vae.train.checkpoint import (
    CHECKPOINT_NAME,
    capture_params,
    load_checkpoint,
    restore_params,
)
from ppl_vae.train.prepare import fingerprint
from ppl_vae.train.records import (
    NO_DATA,
    PYTHON_PREFIX,
    SAVED_DATA,
    SAVED_PREFIX,
    dataset_from_data,
    parameter_differences,
    parameter_shapes,
    saved_dataset,
)
from ppl_vae.train.resume import fingerprint_differences
from ppl_vae.train.user_data import is_data_function, load_data_function, named_data

__all__ = ["Run", "RUN_FILES", "load_data", "data_record", "load_run", "build_programs",
           "write_config", "read_config", "program_record"]

# Every file a run folder may hold (--overwrite removes exactly these, and what the manifest lists).
RUN_FILES = ("config.json", "history.csv", CHECKPOINT_NAME, "final.pt", "evaluation.csv",
             "report.html", "diagnostics.nc", "diagnostics.csv", "diagnostics_checks.csv",
             SAVED_DATA)
DTYPES = {"float32": torch.float32, "float64": torch.float64}

DATASETS = {
    "digits": datasets.load_digits,
    "binary": datasets.make_binary_images,
    "linear_gaussian": datasets.make_linear_gaussian,
    "regression": datasets.make_regression,
    "eight_schools": datasets.load_eight_schools,
}


def load_data(spec: str) -> datasets.Dataset:
    """A name in ``DATASETS``, ``mnist:DIR``, a ``.npy``/``.npz``/``.csv`` file, or
    ``file.py:function``: the data a function of the user's file returns
    (:mod:`ppl_vae.train.user_data`)."""
    if is_data_function(spec):
        return load_data_function(spec)
    if spec in DATASETS:
        return DATASETS[spec]()
    if spec.startswith("mnist:"):
        return datasets.load_mnist(spec.split(":", 1)[1])
    if Path(spec).suffix in {".npy", ".npz", ".csv"}:
        return datasets.load_array(spec)
    if Path(spec).is_dir():
        raise ValueError(f"data {spec!r} is a folder: pass a .npy/.npz/.csv file in it, or "
                         f"mnist:{spec} for a folder of MNIST IDX files")
    raise ValueError(
        f"unknown data {spec!r}; choose one of: {', '.join(DATASETS)}, mnist:DIR, a "
        ".npy/.npz/.csv file, or file.py:function (a function returning the data)"
    )


def data_record(spec: str) -> str:
    """config.json's ``data`` for a ``--data`` spec: a file or folder by its absolute path, so
    that ``evaluate`` and ``report`` find it from any working directory."""
    if spec.startswith("mnist:"):
        return f"mnist:{Path(spec.split(':', 1)[1]).resolve()}"
    if is_data_function(spec):
        path, name = spec.split(":", 1)
        return f"{Path(path).resolve()}:{name}"
    if Path(spec).suffix in {".npy", ".npz", ".csv"}:
        return str(Path(spec).resolve())
    return spec


def build_programs(config: dict, dataset, **programs):
    """Model and guide of a run. A synthetic data set's generating latent dimension is the
    default ``latent_dim`` of both (so that, say, ``ppca`` and ``mlp`` agree without flags).
    ``programs`` (``model=``, ``guide=``: a spec or the class/function itself) replace the
    config's entries."""
    defaults = {"latent_dim": int(dataset.info["latent_dim"])} if "latent_dim" in dataset.info else {}
    model = build("model", programs.get("model", config["model"]), dataset, defaults=defaults,
                  **config.get("model_options", {}))
    guide = build("guide", programs.get("guide", config["guide"]), dataset, defaults=defaults,
                  **config.get("guide_options", {}))
    return model, guide


def fit_data(config: dict, dataset, split: str = "train"):
    """The ``data`` argument ``fit`` gets for this run: features, plus labels when the model
    is conditional (``config["use_labels"]``), plus real-valued targets when the data set has
    them (``Dataset.train_targets``: regression-type data, programs called as ``(x, y)``)."""
    x = dataset.train if split == "train" else dataset.test
    parts = [x]
    if config.get("use_labels"):
        if dataset.train_labels is None:
            raise ValueError(f"use_labels (--with-labels) was given but data {dataset.name!r} "
                             "has no labels")
        parts.append(dataset.train_labels if split == "train" else dataset.test_labels)
    if dataset.train_targets is not None:
        parts.append(dataset.train_targets if split == "train" else dataset.test_targets)
    parts.extend(dataset.train_extra if split == "train" else dataset.test_extra)
    return parts[0] if len(parts) == 1 else tuple(parts)


def program_record(kind: str, spec: str) -> dict:
    """config.json entries for a program spec: the spec, and for a user file its sha256."""
    return {kind: spec, **({f"{kind}_sha256": file_sha256(spec)} if is_file_spec(spec) else {})}


def write_config(out: Path, config: dict) -> None:
    """Write ``out/config.json`` atomically (recorded in the manifest)."""
    text = json.dumps(config, indent=2, default=str)
    write_bytes(Path(out) / "config.json", text.encode(), manifest=True)


def read_config(run_dir) -> dict:
    """``run_dir/config.json``, checked against the manifest and for the keys a run needs."""
    path = Path(run_dir) / "config.json"
    if not path.exists() and not path.is_symlink():
        raise ValueError(f"{Path(run_dir)} is not a ppl-vae run folder (no config.json)")
    data = read_run_file(path, require_manifest=True)
    try:
        config = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore it or retrain") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    for key, kind in (("model", str), ("guide", str), ("data", str), ("model_options", dict),
                      ("guide_options", dict), ("settings", dict)):
        required = key in ("model", "guide", "data")
        if (required and key not in config) or (key in config and not isinstance(config[key], kind)):
            raise ValueError(f"{path}: {key!r} is missing or not a {kind.__name__}")
    dtype = config.get("settings", {}).get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"{path}: settings.dtype {dtype!r} is not one of {sorted(DTYPES)}")
    return config


@dataclass
class Run:
    path: Path
    config: dict
    dataset: datasets.Dataset
    model: object
    guide: object
    history: pd.DataFrame

    def data(self, split: str = "test"):
        return fit_data(self.config, self.dataset, split)


def _program(path: Path, config: dict, kind: str, given):
    """What to build for ``kind``: the config's zoo name, or the program the caller named."""
    recorded = config[kind]
    if given is None:
        return recorded  # a zoo name (user files are refused before, in load_run)
    if not isinstance(given, str) or recorded.startswith(PYTHON_PREFIX):
        # A program passed in Python, or one a Python session described: the parameters'
        # recorded names and shapes are what load_run checks it against.
        return given
    if is_file_spec(given) != is_file_spec(recorded) or (
            not is_file_spec(given) and given != recorded) or (
            is_file_spec(given) and given.split(":", 1)[1] != recorded.split(":", 1)[1]):
        raise ValueError(f"--{kind} {given}: {path} was trained with {kind} {recorded!r}")
    if is_file_spec(given):
        want, got = config.get(f"{kind}_sha256"), file_sha256(given)
        if want is None:
            warnings.warn(f"{path / 'config.json'} records no sha256 for {recorded!r}: cannot "
                          f"check that {given} is the file the run was trained with", stacklevel=3)
        elif want != got:
            raise ValueError(
                f"--{kind} {given}: the file differs from the one {path} was trained with "
                f"(sha256 {got[:12]}... now, {want[:12]}... recorded); restore that file or retrain")
    return given


def _user_record(spec: str) -> bool:
    return is_file_spec(spec) or spec.startswith(PYTHON_PREFIX)


def _run_dataset(path: Path, config: dict, data, validation_data):
    """The run's data: its named data set or file, the folder's saved ``data.npz``, or (for a
    folder that records none: ``fit(checkpoint_dir=...)``) what the caller passes."""
    spec = config["data"]
    if spec == NO_DATA:
        if data is None:
            raise ValueError(
                f"{path} records no data (fit(checkpoint_dir=...) keeps no copy of it): load it "
                "in Python with ppl_vae.load(..., data=...), or write the folder with "
                "FitResult.save(dir, data=...) for the CLI")
        return dataset_from_data(data, validation_data, name=path.name)
    if data is not None and not isinstance(data, str):
        raise ValueError(f"data: {path} brings its own data ({spec!r}); pass none")
    if spec.startswith(SAVED_PREFIX):
        return saved_dataset(path, read_run_file(path / spec[len(SAVED_PREFIX):]))
    return load_data(named_data(path, config, data))


def load_run(run_dir, *, model=None, guide=None, data=None, validation_data=None) -> Run:
    """Rebuild the programs of a run folder with their trained parameters.

    Every file read is checked against the folder's manifest. Zoo programs are built from
    their recorded names; a user program (``file.py:name`` in config.json) is imported only
    when given here, as the same ``file.py:name`` (checked against the recorded sha256) or as
    the class/function itself; a program a Python session saved (``python:...``) is passed
    again. Clears Pyro's param store: the run's parameters replace it. ``data``: for a folder that
    records no data (``fit(checkpoint_dir=...)``), the data itself (and ``validation_data``); for
    a run trained on a user file's function (``file.py:function``), that spec named again, the
    file checked against the recorded sha256.
    When config.json records the parameters' names and shapes, programs whose parameters
    differ are refused, naming them.
    """
    path = Path(run_dir)
    config = read_config(path)
    named = {"model": model, "guide": guide}
    described = [k for k in named if named[k] is None and config[k].startswith(PYTHON_PREFIX)]
    if described:
        raise ValueError(
            f"{path / 'config.json'}: the {' and '.join(described)} were saved from Python ("
            + ", ".join(config[k] for k in described) + "), not from a file: pass the programs "
            "again (Python: ppl_vae.load(..., model=..., guide=...); CLI: --model file.py:name)")
    missing = [f"--{k} {config[k]}" for k in named if named[k] is None and _user_record(config[k])]
    if missing:
        raise ValueError(
            f"{path / 'config.json'} names user program file(s); ppl-vae never imports code a "
            f"run folder names: pass {' '.join(missing)} (Python: load_run(..., model=..., "
            "guide=...)) to load them")
    programs = {"model": _program(path, config, "model", model),
                "guide": _program(path, config, "guide", guide)}
    dtype = DTYPES[config.get("settings", {}).get("dtype", "float32")]
    dataset = _run_dataset(path, config, data, validation_data).to(dtype)
    final = path / "final.pt"
    if not final.exists():
        final = path / CHECKPOINT_NAME
    if not final.exists():
        raise ValueError(f"{path} holds no trained parameters (final.pt or checkpoint.pt)")
    ckpt = load_checkpoint(final, map_location="cpu")
    recorded = config.get("settings", {}).get("fingerprint") or \
        ckpt.get("settings", {}).get("fingerprint")
    if recorded:
        _check_same_data(path, config, dataset, dtype, recorded)
    pyro.clear_param_store()
    model, guide = build_programs(config, dataset, **programs)
    trained = config.get("settings", {}).get("programs") or \
        ckpt.get("settings", {}).get("programs")
    changed = programs_differences(trained, program_digests(model, guide)) if trained else []
    if changed:
        raise ValueError(f"{path}: the programs are not the code the run was trained with "
                         f"({'; '.join(changed)}); restore that code or retrain")
    for program in (model, guide):
        if isinstance(program, torch.nn.Module):
            program.to(dtype=dtype)
    # pyro.param sites are created by running the programs once before their values load: on
    # two rows, or on all training rows where a trained parameter has one entry per row (a
    # per-row pyro.param sized by x.shape[0], an autoguide's local latents).
    with torch.random.fork_rng():
        max_plate_nesting(model, guide, tuple(t[:_setup_rows(config, ckpt)]
                                              for t in _as_tuple(fit_data(config, dataset))))
    if "parameters" in config:
        now = parameter_shapes(capture_params(model, guide, pyro.get_param_store().keys()))
        differences = parameter_differences(config["parameters"], now)
        if differences:
            raise ValueError(f"{path}: the programs' parameters are not the trained ones ("
                             + "; ".join(differences[:6])
                             + ("; ..." if len(differences) > 6 else "")
                             + "): pass the programs the run was trained with")
    try:
        restore_params(ckpt["params"], model, guide)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{final}: the trained parameters do not fit the programs built from "
                         f"config.json ({first})") from exc
    history = path / "history.csv"
    history = pd.read_csv(io.BytesIO(read_run_file(history))) if history.exists() else pd.DataFrame()
    return Run(path, config, dataset, model, guide, history)


def _setup_rows(config: dict, ckpt: dict) -> int | None:
    """Rows to run the programs on before the parameters load: the analysis' probe (enough
    for a plate the programs subsample themselves, ``subsample_size=B`` of the rows given),
    or all (None) when a trained parameter has one entry per training row (a per-row
    ``pyro.param`` sized by ``x.shape[0]``, an autoguide's local latents: made for the rows
    of their first call). Read from the checkpoint's own tensors, so runs of every version
    are covered."""
    rows = config.get("settings", {}).get("num_data")
    params = ckpt.get("params", {})
    shapes = [tuple(v.shape) for group in params.values() if isinstance(group, dict)
              for v in group.values() if isinstance(v, torch.Tensor)]
    return None if rows is None or any(rows in shape for shape in shapes) else PROBE_ROWS


def _check_same_data(path: Path, config: dict, dataset, dtype, recorded: dict) -> None:
    """Refuse a run whose data file changed since training: its numbers would be another data
    set's (compared as resume compares, by shape and the sha256 of every value)."""
    now = {part: fingerprint(as_tensors(fit_data(config, dataset, split), dtype=dtype))
           for part, split in (("data", "train"), ("validation", "test"))}
    if recorded.get("validation") is None:
        now["validation"] = None
    differences = fingerprint_differences(recorded, now)
    if differences:
        raise ValueError(f"{path}: data {config['data']!r} is not the data the run was trained on "
                         f"({'; '.join(differences)}); restore it or retrain")


def _as_tuple(data):
    return data if isinstance(data, tuple) else (data,)
