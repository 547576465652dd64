import numpy as np
import pandas as pd
import pytest
import torch

from ppl_vae.data.tensors import as_tensors, check_finite, iter_batches, resolve_device


def test_accepts_tensor_ndarray_and_dataframe():
    arr = np.arange(12, dtype=np.float64).reshape(4, 3)
    for value in (torch.as_tensor(arr, dtype=torch.float32), arr, pd.DataFrame(arr)):
        (t,) = as_tensors(value)
        assert t.shape == (4, 3) and t.dtype == torch.float32


def test_float64_tensor_keeps_its_dtype_and_labels_stay_integer():
    x = torch.zeros(3, 2, dtype=torch.float64)
    xs, ys = as_tensors((x, np.array([0, 1, 2])))
    assert xs.dtype == torch.float64 and ys.dtype == torch.int64


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="empty"):
        as_tensors(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="different numbers of rows"):
        as_tensors((np.zeros((3, 2)), np.zeros(4)))
    with pytest.raises(ValueError, match="not numeric"):
        as_tensors(pd.DataFrame({"a": ["x", "y"]}))


def test_nan_rows_are_named():
    x = torch.zeros(6, 2)
    x[1, 0] = float("nan")
    x[4, 1] = float("inf")
    with pytest.raises(ValueError, match=r"2 row\(s\): 1, 4"):
        check_finite((x,))


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_batches_cover_every_row_once():
    x = torch.arange(10.0)[:, None]
    g = torch.Generator().manual_seed(0)
    rows = torch.cat([b[0] for b in iter_batches((x,), 3, shuffle=True, generator=g)])
    assert sorted(rows.flatten().tolist()) == list(range(10))
