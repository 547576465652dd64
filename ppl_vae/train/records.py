"""What a run folder records of a Python session's programs, parameters and data (see
:mod:`~ppl_vae.train.saving`): program descriptions, the parameters' names and shapes that
loading checks, and the data set of what ``fit`` was given."""

from __future__ import annotations

import hashlib
import inspect
import io
import json
from pathlib import Path

import numpy as np
import torch

from ppl_vae.data.datasets import Dataset
from ppl_vae.data.tensors import as_tensors
from ppl_vae.programs.nn import constructor_arguments
from ppl_vae.programs.registry import available, file_sha256

__all__ = ["SAVED_DATA", "SAVED_PREFIX", "PYTHON_PREFIX", "NO_DATA", "describe_program",
           "parameter_shapes", "parameter_differences", "dataset_from_data", "saved_dataset",
           "dataset_parts"]

SAVED_DATA = "data.npz"
SAVED_PREFIX = "saved:"
PYTHON_PREFIX = "python:"
NO_DATA = "none"


def describe_program(kind: str, program) -> dict:
    """config.json entries for a Python program: a zoo entry's name and options (``vae``,
    ``{"latent_dim": 8}``) for an instance of a zoo class built as it is; ``file.py:name`` (and
    the file's sha256) when ``program`` is a module-level name of a ``.py`` file; else
    ``python:module.qualname`` (which a fresh process cannot rebuild: it needs the program
    passed again)."""
    zoo = _zoo_entry(kind, program)
    if zoo is not None:
        return zoo
    module = inspect.getmodule(program) or inspect.getmodule(type(program))
    path = getattr(module, "__file__", None)
    name = next((k for k, v in vars(module).items() if v is program and not k.startswith("_")),
                None) if module is not None else None
    if path and name and path.endswith(".py"):
        spec = f"{path}:{name}"
        return {kind: spec, f"{kind}_sha256": file_sha256(spec)}
    label = getattr(program, "__qualname__", type(program).__qualname__)
    return {kind: f"{PYTHON_PREFIX}{getattr(module, '__name__', '?')}.{label}"}


def _zoo_entry(kind: str, program) -> dict | None:
    """``{kind: name, kind_options: {...}}`` for an instance of a registered zoo class whose
    constructor options are JSON (the data-set arguments, without defaults, are what
    ``from_dataset`` fills in again), else None."""
    arguments = constructor_arguments(program)
    if arguments is None:
        return None
    name = next((n for n, ep in sorted(available(kind).items())
                 if ep.load() is type(program)), None)
    if name is None:
        return None
    params = inspect.signature(type(program).__init__).parameters
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()
               if params[k].default is not inspect.Parameter.empty and v != params[k].default}
    try:
        json.dumps(options, allow_nan=False)
    except (TypeError, ValueError):
        return None  # an option that is an object (a model, a class): described as Python
    return {kind: name, f"{kind}_options": options}


def parameter_shapes(params: dict) -> dict:
    """``{group: {name: shape}}`` of a ``FitResult.params``-like dict (``pyro_params``,
    ``model``, ``guide``), with ``sha256`` over them: what loading checks the programs against."""
    shapes = {group: {name: list(value.shape) for name, value in sorted(values.items())}
              for group, values in sorted(params.items())}
    text = json.dumps(shapes, sort_keys=True).encode()
    return {**shapes, "sha256": hashlib.sha256(text).hexdigest()}


def parameter_differences(recorded: dict, now: dict) -> list[str]:
    """Each way the programs' parameters ``now`` differ from the ``recorded`` ones (both from
    :func:`parameter_shapes`): missing, unexpected (module state only: a Pyro param store may
    hold more than the run trained) or of another shape."""
    out = []
    for group in ("pyro_params", "model", "guide"):
        was, has = recorded.get(group, {}), now.get(group, {})
        if group == "pyro_params":  # module parameters ("name$$$key") are checked by their
            # module's state dict: their prefix is a per-process name (the zoo's unique_name)
            was = {n: v for n, v in was.items() if "$$$" not in n}
            has = {n: v for n, v in has.items() if "$$$" not in n}
        out += [f"{group} {n!r} is missing" for n in was if n not in has]
        if group != "pyro_params":
            out += [f"{group} {n!r} was not trained" for n in has if n not in was]
        out += [f"{group} {n!r} has shape {tuple(has[n])}, trained {tuple(was[n])}"
                for n in was if n in has and list(has[n]) != list(was[n])]
    return out


def _parts(data, argument: str) -> tuple[torch.Tensor, ...]:
    parts = as_tensors(data, name=argument)
    if len(parts) > 2:
        raise ValueError(f"{argument}: a run folder holds x or (x, y); got {len(parts)} members")
    return parts


def dataset_from_data(data, validation_data=None, *, name: str = "data") -> Dataset:
    """A :class:`Dataset` of what ``fit`` was given: ``x`` or ``(x, y)`` with integer labels or
    real targets ``y``; without validation data its test split is the training data."""
    train = _parts(data, "data")
    test = train if validation_data is None else _parts(validation_data, "validation_data")
    if len(test) != len(train):
        raise ValueError(f"validation_data has {len(test)} member(s), data {len(train)}")
    labels = len(train) == 2 and not torch.is_floating_point(train[1])
    extra = {"train_labels": train[1], "test_labels": test[1]} if labels else {}
    if len(train) == 2 and not labels:
        extra = {"train_targets": train[1], "test_targets": test[1]}
    return Dataset(train[0], test[0], name=name,
                   info={"source": "python", "validation": validation_data is not None}, **extra)


def saved_dataset(run_dir, data: bytes) -> Dataset:
    """The :class:`Dataset` of a folder's ``data.npz`` (written by :func:`save_result`)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        tensors = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
    validation = bool(tensors.pop("has_validation", torch.tensor(True)))
    return Dataset(tensors.pop("train"), tensors.pop("test"), name=Path(run_dir).name,
                   info={"source": str(Path(run_dir) / SAVED_DATA), "validation": validation},
                   **tensors)



def dataset_parts(dataset: Dataset, split: str, *, labels: bool = True):
    """``x`` or ``(x, y)`` of one split, as ``fit`` got it (``labels=False``: a named data set
    whose labels the run did not use, as the CLI without ``--with-labels``)."""
    x = dataset.train if split == "train" else dataset.test
    for kind in ("labels", "targets") if labels else ("targets",):
        y = getattr(dataset, f"{split}_{kind}")
        if y is not None:
            return x, y
    return x
