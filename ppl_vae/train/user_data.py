"""A program file's own data: the CLI's ``--data file.py:function``.

A user program often needs its data loaded and shaped its own way (counts as floats, an
``(x, y)`` pair, a sequence tensor with its lengths). The file that holds the model can hold a
function that returns the data, and ``--data file.py:function`` calls it. A run folder records
the spec and the file's sha256, as for ``--model file.py:name``: the file is imported only when
it is named again on the command line (``evaluate``, ``diagnose``, ``report``), and a file that
changed since training is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ppl_vae.data.datasets import Dataset
from ppl_vae.data.tensors import as_tensors
from ppl_vae.programs.registry import file_sha256, is_file_spec, resolve

__all__ = ["is_data_function", "load_data_function", "data_function_record", "named_data"]

_RETURNS = ("a tensor (or NumPy array) of rows, a tuple of them (the programs' arguments), or "
            "a ppl_vae.data.datasets.Dataset")


def is_data_function(spec) -> bool:
    """Whether a ``--data`` spec names a function of a Python file (``file.py:function``)."""
    return is_file_spec(spec)


def _as_dataset(value, spec: str) -> Dataset:
    """The function's return value as a :class:`Dataset`. A tensor or tuple has no held-out
    split: its test split is the training data (a guide with one parameter per row has
    parameters for those rows only)."""
    if isinstance(value, Dataset):
        return value
    members = value if isinstance(value, tuple) else (value,)
    if not members or not all(isinstance(m, (torch.Tensor, np.ndarray)) for m in members):
        got = type(value).__name__ if not isinstance(value, tuple) else \
            "a tuple of " + ", ".join(type(m).__name__ for m in members)
        raise ValueError(f"--data {spec}: the function returned {got}; return {_RETURNS}")
    tensors = as_tensors(members, name=f"--data {spec}")
    path, name = spec.split(":", 1)
    return Dataset(tensors[0], tensors[0], name=f"{Path(path).stem}:{name}",
                   info={"source": spec, "split": "none (test rows are the training rows)"},
                   train_extra=tensors[1:], test_extra=tensors[1:])


def load_data_function(spec: str) -> Dataset:
    """Import ``file.py``, call ``function()`` and return its data as a :class:`Dataset`.

    Raises
    ------
    ValueError
        One line naming the file and function: no such file or function, the function is not
        callable or raised, or it returned something other than a tensor, a tuple of tensors or
        a ``Dataset``.
    """
    function = resolve("data", spec)  # a file spec: the kind names no registry here
    if not callable(function):
        raise ValueError(f"--data {spec}: {spec.split(':', 1)[1]!r} is a "
                         f"{type(function).__name__}, not a function; name a function that "
                         f"returns {_RETURNS}")
    try:
        value = function()
    except Exception as exc:  # noqa: BLE001 - the user's function failed: say which, one line
        raise ValueError(f"--data {spec}: the function raised {type(exc).__name__}: "
                         f"{exc}") from exc
    return _as_dataset(value, spec)


def data_function_record(spec: str) -> dict:
    """config.json entries for a data function: the spec with the file's absolute path (so that
    a run opens from any working directory), and the file's sha256."""
    path, name = spec.split(":", 1)
    return {"data": f"{Path(path).resolve()}:{name}", "data_sha256": file_sha256(spec)}


def named_data(run_dir: Path, config: dict, given: str | None) -> str:
    """The ``--data`` spec to load a run's data from: its recorded name, or for a data function
    the ``file.py:function`` named again by the caller, checked against the recorded sha256."""
    recorded = config["data"]
    if not is_data_function(recorded):
        # A data set's name or file is data only, and always loaded from the record.
        if given is not None and is_data_function(given):
            raise ValueError(f"--data {given}: {run_dir} was trained on data {recorded!r}")
        return recorded
    if given is None:
        raise ValueError(f"{run_dir / 'config.json'} names the data function {recorded!r}; "
                         f"ppl-vae never imports code a run folder names: pass --data "
                         f"{recorded} to load it")
    if not is_data_function(given) or given.split(":", 1)[1] != recorded.split(":", 1)[1]:
        raise ValueError(f"--data {given}: {run_dir} was trained on data {recorded!r}")
    want, got = config.get("data_sha256"), file_sha256(given)
    if want is None:
        warnings.warn(f"{run_dir / 'config.json'} records no sha256 for {recorded!r}: cannot "
                      f"check that {given} is the file the run was trained with", stacklevel=3)
    elif want != got:
        raise ValueError(f"--data {given}: the file differs from the one {run_dir} was trained "
                         f"with (sha256 {got[:12]}... now, {want[:12]}... recorded); restore "
                         "that file or retrain")
    return given
