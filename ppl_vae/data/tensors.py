"""Turning user data into tensors on the right device, checking it, and cutting batches.

A data set is one array-like (rows are data points) or a tuple of them with the same number of
rows; the model and guide are called as ``model(*batch)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["as_tensors", "check_finite", "iter_batches", "num_rows", "resolve_device", "shape_hint"]


def resolve_device(device) -> torch.device | None:
    """Parse a device argument, with a clear error for names torch does not know."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} was asked for but MPS is not available here")
    return dev


# Floating dtypes too coarse for log-densities summed over thousands of values.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _fix(value, to: str) -> str:
    """How to convert ``value`` in its own library (for the error messages)."""
    if isinstance(value, pd.DataFrame | pd.Series):
        return f"df.astype('{to}')"
    if isinstance(value, np.ndarray):
        return f"x.astype(np.{to})"
    return "x.float()" if to == "float32" else "x.double()"


def _from_frame(value: pd.DataFrame, name: str) -> np.ndarray:
    non_numeric = [c for c in value.columns if not pd.api.types.is_numeric_dtype(value[c])
                   or pd.api.types.is_complex_dtype(value[c])]
    if non_numeric:
        raise ValueError(f"{name}: columns {non_numeric} are not numeric (real numbers); "
                         "drop or encode them")
    missing = value.isna().to_numpy().any(axis=1)
    if missing.any():
        rows = np.flatnonzero(missing).tolist()
        shown = ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")
        raise ValueError(f"{name} has missing values (NaN / pd.NA) in {len(rows)} row(s): {shown}; "
                         "drop or impute them (df.dropna(), df.fillna(...))")
    # Nullable columns (Int64, Float64, boolean) become their NumPy dtype; pd.NA is gone.
    numpy_dtypes = [getattr(value[c].dtype, "numpy_dtype", value[c].dtype) for c in value.columns]
    return value.to_numpy(dtype=np.result_type(*numpy_dtypes))


def _one_tensor(value, *, name: str, dtype, device, features: bool) -> torch.Tensor:
    """One member as a tensor. ``features``: the first member, which must be real floating
    point (the observations); later members may also be integer (labels, indices, counts)."""
    original = value
    if isinstance(value, pd.Series):
        value = value.to_frame()
    if isinstance(value, pd.DataFrame):
        value = _from_frame(value, name)
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.number) and value.dtype != bool:
            raise ValueError(f"{name}: array of dtype {value.dtype} is not numeric")
        # A read-only array (pandas' copy-on-write, a memory map) is copied: torch warns
        # otherwise, and a tensor must not write through to the user's data.
        value = np.ascontiguousarray(value) if value.flags.writeable else value.copy(order="C")
        value = torch.from_numpy(value)
    if type(value).__module__.startswith("scipy.sparse"):
        raise ValueError(f"{name} is a SciPy sparse matrix; the programs take dense rows: pass "
                         "x.toarray()")
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{name}: cannot be read as a numeric tensor ({exc})") from None
    if value.layout != torch.strided:
        raise ValueError(f"{name} is a sparse tensor ({value.layout}); the programs take dense "
                         "rows: pass x.to_dense()")
    if value.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device, which holds shapes but no values; "
                         "pass a tensor with data, e.g. on 'cpu'")
    if value.dim() == 0:
        raise ValueError(f"{name}: a scalar is not a data set; rows must be data points")
    if value.dim() > 1 and 0 in value.shape[1:]:
        raise ValueError(f"{name} has rows of shape {tuple(value.shape[1:])}: no values per row "
                         "(0 columns); pass the columns the programs observe")
    kind = str(value.dtype).replace("torch.", "")
    if value.is_complex():
        raise ValueError(f"{name} is {kind}: likelihoods take real values; pass the real and "
                         "imaginary parts as separate columns, e.g. torch.view_as_real(x)")
    if features and not value.is_floating_point():
        raise ValueError(f"{name} is {kind}; pass floats, e.g. {_fix(original, 'float32')} "
                         "(integer members are allowed after the first, as labels: (x, y))")
    if value.is_floating_point() or value.dtype == torch.bool:
        if dtype in _LOW_PRECISION or (dtype is None and value.dtype in _LOW_PRECISION):
            raise ValueError(f"{name} is {kind}: too coarse for log-densities; pass float32 or "
                             f"float64, e.g. {_fix(original, 'float32')}")
        value = value.to(dtype=dtype)
    # Integer columns (labels, counts) keep their dtype: models index or embed with them.
    return value.to(device=device) if device is not None else value


def as_tensors(data, *, dtype=None, device=None, name: str = "data") -> tuple[torch.Tensor, ...]:
    """Convert ``data`` (tensor, ndarray, DataFrame, or a tuple of these) to a tuple of tensors.

    Parameters
    ----------
    data : array-like or tuple of array-likes
        Rows are data points; every member must have the same number of rows ``N``. The first
        member holds the observations and must be real floating point (float32 or float64;
        float16/bfloat16 are too coarse, integers, booleans and complex numbers are refused with
        the conversion to use). Later members may be floating or integer (labels, indices).
        A list is refused: a list of rows is ambiguous with a list of members.
    dtype : torch.dtype, optional
        Floating dtype for floating members. Defaults to the first floating member's dtype when it
        is a tensor, else ``torch.get_default_dtype()``.
    device : torch.device, optional
        Where to put the tensors (moved once, here).

    Returns
    -------
    tuple of torch.Tensor
        Each of shape ``(N, ...)``.
    """
    if isinstance(data, list):
        raise ValueError(f"{name} is a Python list; pass an array of rows, e.g. "
                         "torch.tensor(rows, dtype=torch.float32), or a tuple (x, y) for "
                         "several arguments")
    members = tuple(data) if isinstance(data, tuple) else (data,)
    if not members:
        raise ValueError(f"{name} is empty")
    if dtype is None:
        first = members[0]
        dtype = first.dtype if isinstance(first, torch.Tensor) and first.is_floating_point() \
            else torch.get_default_dtype()
    labels = [name] if len(members) == 1 else [f"{name}[{i}]" for i in range(len(members))]
    tensors = tuple(
        _one_tensor(m, name=label, dtype=dtype, device=device, features=i == 0)
        for i, (m, label) in enumerate(zip(members, labels, strict=True))
    )
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) != 1:
        raise ValueError(
            f"{name}: members have different numbers of rows: {[t.shape[0] for t in tensors]}"
        )
    if tensors[0].shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    return tensors


def shape_hint(batch: Sequence[torch.Tensor]) -> str:
    """What to tell a user whose program failed on ``batch`` of 1-D data (rows expected)."""
    if batch and batch[0].dim() == 1:
        return ("; the data is 1-D (shape (N,)), and a program that reads rows of features "
                "needs (N, D): pass x[:, None] for one feature per point, or x[None] for a "
                "single data point")
    return ""


def num_rows(tensors: Sequence[torch.Tensor]) -> int:
    return int(tensors[0].shape[0])


def check_finite(tensors: Sequence[torch.Tensor], *, name: str = "data", max_rows: int = 10):
    """Raise ``ValueError`` naming the rows that hold NaN or infinite values."""
    for i, t in enumerate(tensors):
        if not t.is_floating_point():
            continue
        bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten().tolist()
            label = name if len(tensors) == 1 else f"{name}[{i}]"
            shown = ", ".join(map(str, rows[:max_rows])) + (" ..." if len(rows) > max_rows else "")
            raise ValueError(
                f"{label} has NaN or infinite values in {len(rows)} row(s): {shown}"
            )


def iter_batches(
    tensors: Sequence[torch.Tensor],
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield batches cut on the tensors' own device.

    The permutation is drawn on the CPU from ``generator`` (so it does not consume the global
    RNG that sample sites use, and resuming at an epoch boundary reproduces it) and moved once.
    """
    n = num_rows(tensors)
    if shuffle:
        order = torch.randperm(n, generator=generator).to(tensors[0].device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield tuple(t.index_select(0, idx) for t in tensors)
    else:
        for start in range(0, n, batch_size):
            yield tuple(t[start : start + batch_size] for t in tensors)
