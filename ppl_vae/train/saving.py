"""Saving a :class:`~ppl_vae.train.result.FitResult` as a run folder, and loading it back.

A folder written here is a run folder in the format the CLI writes (:mod:`~ppl_vae.train.run_dir`):
``config.json``, ``history.csv``, ``final.pt`` and the sha256 ``manifest.json``, so that
``ppl-vae evaluate``, ``diagnose`` and ``report`` read it. What the CLI records by name, a
Python session records as follows:

* programs: ``file.py:name`` and the file's sha256 when the program is a module-level name of a
  ``.py`` file (the CLI then takes ``--model file.py:name``), else ``python:module.qualname``
  (a description: the program must be passed again). Either way ``config.json`` records every
  parameter's name and shape (``parameters``), and loading refuses programs whose parameters
  differ, naming them;
* data: a data-set name or file (``data="digits"``) as the CLI's ``--data``; arrays or tensors
  are written into the folder as ``data.npz`` (config ``data: "saved:data.npz"``); without
  ``data`` the folder records ``"none"`` and only Python can evaluate it (with ``data=``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from ppl_vae.data.datasets import Dataset
from ppl_vae.data.tensors import as_tensors
from ppl_vae.storage.files import MANIFEST_NAME, lock_run, remove_run_files, write_bytes
from ppl_vae.train.checkpoint import save_checkpoint, save_history
from ppl_vae.train.prepare import fingerprint
from ppl_vae.train.records import (
    NO_DATA,
    SAVED_DATA,
    SAVED_PREFIX,
    dataset_from_data,
    dataset_parts,
    describe_program,
    parameter_shapes,
)
from ppl_vae.train.resume import fingerprint_differences
from ppl_vae.train.run_dir import RUN_FILES, data_record, load_data, read_config

__all__ = ["save_result", "start_fit_folder", "finish_fit_folder"]


def _write_data(out: Path, dataset: Dataset) -> None:
    arrays = {k: getattr(dataset, k) for k in ("train", "test", "train_labels", "test_labels",
                                              "train_targets", "test_targets")}
    arrays = {k: v.detach().cpu().numpy() for k, v in arrays.items() if v is not None}
    buffer = io.BytesIO()
    np.savez(buffer, has_validation=np.array(dataset.info["validation"]), **arrays)
    write_bytes(out / SAVED_DATA, buffer.getvalue(), manifest=True)


def _check_fingerprint(dataset: Dataset, settings: dict, labels: bool) -> None:
    """Refuse data that is not the data the run was trained on (shape and sampled rows)."""
    recorded = settings.get("fingerprint")
    if not recorded:
        return
    dtype = getattr(torch, settings.get("dtype", "float32"))
    has_validation = bool(dataset.info.get("validation"))
    parts = {split: as_tensors(dataset_parts(dataset, split, labels=labels), dtype=dtype)
             for split in ("train", "test")}
    now = {"data": fingerprint(parts["train"]),
           "validation": fingerprint(parts["test"]) if has_validation else None}
    differences = fingerprint_differences(
        recorded if has_validation else {**recorded, "validation": None}, now)
    if differences:
        raise ValueError("data: not the data the run was trained on ("
                         + "; ".join(differences) + "); pass the data given to fit")




def _config(result, data_spec: str, use_labels: bool) -> dict:
    """config.json of a saved result: the programs as a loaded folder recorded them (zoo names
    and options, files and their sha256), else as :func:`describe_program` describes them."""
    programs = dict(result.record) if result.record else {
        "model_options": {}, "guide_options": {},
        **describe_program("model", result.model), **describe_program("guide", result.guide)}
    if result.record and not data_spec.startswith(SAVED_PREFIX):
        use_labels = bool(result.record.get("use_labels"))
    return {**programs, "data": data_spec, "use_labels": use_labels,
            "settings": result.settings, "parameters": parameter_shapes(result.params),
            "written_by": "python"}


def save_result(result, path, *, data=None, validation_data=None, overwrite: bool = False) -> Path:
    """Write ``result`` as a run folder; see :meth:`ppl_vae.FitResult.save`."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"path {out} is a file, not a folder")
    present = [n for n in (*RUN_FILES, MANIFEST_NAME) if (out / n).exists()]
    if present and not overwrite:
        raise FileExistsError(f"{out} already holds a run ({', '.join(present)}): pass "
                              "overwrite=True to replace it, or choose another folder")
    if isinstance(data, str):
        dataset, spec = load_data(data), data_record(data)
        if validation_data is not None:
            raise ValueError("validation_data: a named data set brings its own test split")
    elif data is not None:
        dataset, spec = dataset_from_data(data, validation_data, name=out.name), \
            SAVED_PREFIX + SAVED_DATA
    else:
        dataset, spec = None, NO_DATA
    if dataset is not None:
        dtype = getattr(torch, result.settings.get("dtype", "float32"))
        named = isinstance(data, str)
        labels = bool((result.record or {}).get("use_labels")) if named else True
        _check_fingerprint(dataset.to(dtype), result.settings, labels=labels)
    out.mkdir(parents=True, exist_ok=True)
    with lock_run(out):
        if present:
            remove_run_files(out, RUN_FILES)
        use_labels = dataset is not None and dataset.train_labels is not None and \
            not isinstance(data, str)
        write_bytes(out / "config.json", json.dumps(_config(result, spec, use_labels), indent=2,
                                                    default=str).encode(), manifest=True)
        if spec.startswith(SAVED_PREFIX):
            _write_data(out, dataset)
        _write_trained(out, result)
    return out


def _write_trained(out: Path, result) -> None:
    records = result.history.to_dict("records")
    save_history(out, records)
    save_checkpoint(out / "final.pt", {"params": result.params, "history": records})


def start_fit_folder(folder, model, guide, dtype: torch.dtype, *, resume: bool) -> bool:
    """Make ``fit(checkpoint_dir=...)``'s folder a run folder from its first epoch on: write its
    ``config.json``, unless the CLI wrote one (it completes its own) or this is a resumed
    ``fit``'s. A run saved there by ``FitResult.save`` is refused. Returns whether this ``fit``
    owns the config (and so completes it at the end)."""
    path = Path(folder) / "config.json"
    if path.exists():
        writer = read_config(folder).get("written_by")
        if writer == "python":
            raise FileExistsError(f"checkpoint_dir {str(folder)!r} holds a run saved by "
                                  "FitResult.save: choose another checkpoint_dir")
        if writer != "fit" or resume:
            return writer == "fit"
    config = {"model_options": {}, "guide_options": {}, **describe_program("model", model),
              **describe_program("guide", guide), "data": NO_DATA, "use_labels": False,
              "settings": {"dtype": str(dtype).replace("torch.", "")}, "written_by": "fit"}
    write_bytes(path, json.dumps(config, indent=2, default=str).encode(), manifest=True)
    return True


def finish_fit_folder(folder, result) -> None:
    """Complete the config ``start_fit_folder`` wrote: the settings, the parameters' shapes and
    ``final.pt`` (the parameters kept: the best epoch's under early stopping)."""
    config = read_config(folder)
    config.update(settings=result.settings, parameters=parameter_shapes(result.params))
    write_bytes(Path(folder) / "config.json",
                json.dumps(config, indent=2, default=str).encode(), manifest=True)
    save_checkpoint(Path(folder) / "final.pt",
                    {"params": result.params, "history": result.history.to_dict("records")})
