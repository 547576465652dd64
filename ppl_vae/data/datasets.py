"""Data sets: scikit-learn's bundled digits, synthetic generators, and local-file loaders.

Nothing here downloads: bigger data sets are read from files the user already has.
"""

from __future__ import annotations

import csv
import gzip
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ppl_vae.data.file_checks import check_csv_layout, check_npz_fits

__all__ = [
    "Dataset",
    "load_digits",
    "load_idx",
    "load_mnist",
    "load_array",
    "make_binary_images",
    "make_linear_gaussian",
    "make_regression",
    "load_eight_schools",
]


@dataclass
class Dataset:
    """A train/test split.

    Attributes
    ----------
    train, test : torch.Tensor
        Float tensors of shape ``(n_train, obs_dim)`` and ``(n_test, obs_dim)``.
    train_labels, test_labels : torch.Tensor or None
        Integer labels of shape ``(n,)`` when the data set has them.
    name : str
    image_shape : tuple of int or None
        ``(height, width)`` when rows are flattened images (the report draws them).
    info : dict
        Anything else worth recording (source, generating parameters).
    train_targets, test_targets : torch.Tensor or None
        Float responses of shape ``(n,)`` for data sets whose programs take ``(x, y)`` with a
        real-valued ``y`` (regression, eight schools): ``run_dir.fit_data`` then passes
        ``(x, y)`` to the programs.
    train_extra, test_extra : tuple of torch.Tensor
        Further arguments of the programs after ``x`` (and labels, targets), one row per row
        of ``x``: the members of a tuple that a program file's own data function returns
        (``ppl-vae --data file.py:function``).
    """

    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    name: str = "data"
    image_shape: tuple[int, int] | None = None
    info: dict = field(default_factory=dict)
    train_targets: torch.Tensor | None = None
    test_targets: torch.Tensor | None = None
    train_extra: tuple[torch.Tensor, ...] = ()
    test_extra: tuple[torch.Tensor, ...] = ()

    @property
    def obs_dim(self) -> int:
        return int(self.train.shape[-1])

    @property
    def num_classes(self) -> int | None:
        if self.train_labels is None:
            return None
        return int(torch.cat([self.train_labels, self.test_labels]).max()) + 1

    def __repr__(self) -> str:
        extra = [f"{self.num_classes} classes" if self.train_labels is not None else "",
                 "targets" if self.train_targets is not None else "",
                 f"images {self.image_shape[0]}x{self.image_shape[1]}" if self.image_shape else ""]
        return (f"Dataset({self.name!r}, train {tuple(self.train.shape)}, test "
                f"{tuple(self.test.shape)}, {self.train.dtype}"
                + "".join(f", {e}" for e in extra if e) + ")")

    def _repr_html_(self) -> str:
        import html

        return f"<code>{html.escape(repr(self))}</code>"

    def to(self, dtype: torch.dtype) -> Dataset:
        targets = [None if t is None else t.to(dtype)
                   for t in (self.train_targets, self.test_targets)]
        extra = [tuple(t.to(dtype) if t.is_floating_point() else t for t in members)
                 for members in (self.train_extra, self.test_extra)]
        return Dataset(self.train.to(dtype), self.test.to(dtype), self.train_labels,
                       self.test_labels, self.name, self.image_shape, dict(self.info), *targets,
                       *extra)


def _split(x: np.ndarray, y: np.ndarray | None, test_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    if y is None:
        xtr, xte = train_test_split(x, test_size=test_fraction, random_state=seed)
        return xtr, xte, None, None
    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def _dataset(xtr, xte, ytr, yte, **kw) -> Dataset:
    to_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    to_l = lambda a: None if a is None else torch.as_tensor(np.asarray(a, dtype=np.int64))  # noqa: E731
    return Dataset(to_t(xtr), to_t(xte), to_l(ytr), to_l(yte), **kw)


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, pixel intensities 0..16
    scaled to [0, 1], split 80/20 (stratified by label, fixed seed): 1,437 train, 360 test."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    xtr, xte, ytr, yte = _split(x, bunch.target, test_fraction, seed)
    return _dataset(xtr, xte, ytr, yte, name="digits", image_shape=(8, 8),
                    info={"source": "sklearn.datasets.load_digits", "seed": seed})


def make_binary_images(
    n: int = 2000, *, obs_dim: int = 784, latent_dim: int = 10, test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Synthetic {0, 1} data from a random nonlinear decoder: z ~ N(0, I), x ~ Bernoulli(
    sigmoid(W2 tanh(W1 z))). Stands in for MNIST-sized inputs (784 features) in benchmarks."""
    g = torch.Generator().manual_seed(seed)
    hidden = 64
    w1 = torch.randn(latent_dim, hidden, generator=g) / latent_dim**0.5
    w2 = torch.randn(hidden, obs_dim, generator=g) * 3 / hidden**0.5
    z = torch.randn(n, latent_dim, generator=g)
    probs = torch.sigmoid(torch.tanh(z @ w1) @ w2 - 1.0)
    x = torch.bernoulli(probs, generator=g).numpy()
    xtr, xte, _, _ = _split(x, None, test_fraction, seed)
    side = int(round(obs_dim**0.5))
    return _dataset(xtr, xte, None, None, name="binary", info={"latent_dim": latent_dim},
                    image_shape=(side, side) if side * side == obs_dim else None)


def make_linear_gaussian(
    n: int = 1000, *, obs_dim: int = 10, latent_dim: int = 2, noise: float = 0.5,
    test_fraction: float = 0.2, seed: int = 0,
) -> Dataset:
    """Synthetic probabilistic-PCA data: z ~ N(0, I), x = W z + b + noise * eps.

    The generating ``W``, ``b`` and ``noise`` are kept in ``info`` so that tests can compare with
    the exact marginal N(b, W W^T + noise^2 I) (Tipping & Bishop 1999).
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(obs_dim, latent_dim, generator=g)
    b = torch.randn(obs_dim, generator=g)
    z = torch.randn(n, latent_dim, generator=g)
    x = (z @ w.T + b + noise * torch.randn(n, obs_dim, generator=g)).numpy()
    xtr, xte, _, _ = _split(x, None, test_fraction, seed)
    return _dataset(xtr, xte, None, None, name="linear_gaussian",
                    info={"W": w, "b": b, "noise": noise, "latent_dim": latent_dim})


def make_regression(
    n: int = 250, *, num_features: int = 3, noise: float = 1.0, test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Synthetic linear regression: x ~ N(0, I), y = x . w + b + noise * eps.

    ``train``/``test`` hold the features ``x`` (shape ``(n, num_features)``), ``train_targets`` /
    ``test_targets`` the responses ``y`` (shape ``(n,)``); the generating ``w``, ``b`` and
    ``noise`` are kept in ``info`` (the conjugate posterior is known in closed form).
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_features, generator=g)
    b = torch.randn((), generator=g)
    x = torch.randn(n, num_features, generator=g)
    y = x @ w + b + noise * torch.randn(n, generator=g)
    # Split rows of [x | y] together so that features and responses stay paired.
    table = np.concatenate([x.numpy(), y.numpy()[:, None]], axis=1).astype(np.float32)
    tr, te, _, _ = _split(table, None, test_fraction, seed)
    tr, te = torch.as_tensor(tr), torch.as_tensor(te)
    return Dataset(tr[:, :-1], te[:, :-1], name="regression",
                   info={"w": w, "b": b, "noise": noise},
                   train_targets=tr[:, -1].contiguous(), test_targets=te[:, -1].contiguous())


# Rubin (1981), Table 2 / Gelman et al., Bayesian Data Analysis, section 5.5: estimated
# coaching effects y_j and their standard errors sigma_j in eight schools.
EIGHT_SCHOOLS_Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
EIGHT_SCHOOLS_SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


def load_eight_schools() -> Dataset:
    """The eight-schools data (Rubin 1981): ``train`` holds each school's known standard error
    sigma_j (shape ``(8, 1)``), ``train_targets`` its estimated effect y_j (shape ``(8,)``).

    There is nothing to hold out, so ``test`` is the same eight schools.
    """
    sigma = torch.tensor(EIGHT_SCHOOLS_SIGMA)[:, None]
    y = torch.tensor(EIGHT_SCHOOLS_Y)
    return Dataset(sigma, sigma.clone(), name="eight_schools",
                   info={"source": "Rubin (1981)"}, train_targets=y, test_targets=y.clone())


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzip-compressed when the name ends in ``.gz``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes), file has {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"no {stem}[.gz] in {directory} (ppl-vae never downloads data)")


def load_mnist(directory: str | Path) -> Dataset:
    """MNIST (or Fashion-MNIST) from the four IDX files in ``directory``, scaled to [0, 1]."""
    d = Path(directory)
    xtr = load_idx(_find(d, "train-images-idx3-ubyte")).reshape(-1, 784) / 255.0
    ytr = load_idx(_find(d, "train-labels-idx1-ubyte"))
    xte = load_idx(_find(d, "t10k-images-idx3-ubyte")).reshape(-1, 784) / 255.0
    yte = load_idx(_find(d, "t10k-labels-idx1-ubyte"))
    return _dataset(xtr, xte, ytr, yte, name=f"mnist:{d}", image_shape=(28, 28),
                    info={"source": str(d)})


def _csv_has_header(path: Path) -> bool:
    """Whether the first row of a CSV file is a header: it is unless every cell is a number.
    The one numeric header recognised is pandas' default column names ``0, 1, ..., D-1``
    (``DataFrame.to_csv(index=False)`` of an unnamed frame), said in a warning."""
    with open(path, newline="") as handle:
        first = next(csv.reader(handle), None)
    if not first:
        raise ValueError(f"{path} is empty: a CSV data file needs rows of numbers")
    try:
        [float(cell) for cell in first]
    except ValueError:
        return True
    if [cell.strip() for cell in first] == [str(i) for i in range(len(first))]:
        warnings.warn(f"{path}: first row 0, 1, ..., {len(first) - 1} read as a header (pandas' "
                      "default column names); pass header=False to read it as data", stacklevel=3)
        return True
    return False


def _read_csv(path: Path, header: bool | None):
    """``(x, labels or None, whether the first line is a header)``."""
    import pandas as pd

    header = _csv_has_header(path) if header is None else header
    try:
        frame = pd.read_csv(path, header=0 if header else None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} cannot be read as a CSV table ({first}); every row needs the "
                         "same number of comma-separated numbers") from None
    check_csv_layout(path, frame, header)
    y = frame.pop("label").to_numpy() if header and "label" in frame else None
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        comma = [c for c in text if frame[c].astype(str).str.fullmatch(r"-?\d+,\d+").any()]
        hint = (f" (values like {frame[comma[0]].iloc[0]!r}: decimal commas; write the file with "
                "'.' decimals)") if comma else ""
        raise ValueError(f"{path}: columns {text} are not numeric; remove or encode them{hint}")
    return frame.to_numpy(), y, header


def _read_numpy(path: Path):
    """``(x, y or None)`` from a ``.npy`` / ``.npz`` file, never unpickling (no code runs)."""
    if path.suffix == ".npz":
        check_npz_fits(path)
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k in ("x", "y")}
            ignored = [k for k in z.files if k not in ("x", "y")]
    except PermissionError:
        raise  # said as it is (the command line names the file and what to do)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile):
        raise ValueError(f"{path} is not a numeric NumPy file (truncated, corrupted, or holding "
                         "Python objects, which ppl-vae never unpickles)") from None
    if "x" not in arrays:
        raise ValueError(f"{path}: an .npz data file needs an array named 'x' (it holds "
                         f"{', '.join(map(repr, ignored)) or 'none'})")
    if ignored:
        warnings.warn(f"{path}: array(s) {ignored} ignored; ppl-vae reads 'x' (the data) and 'y' "
                      "(integer labels)", stacklevel=3)
    return arrays["x"], arrays.get("y")


def _row_list(rows: np.ndarray, offset: int = 0) -> str:
    shown = ", ".join(str(int(r) + offset) for r in rows[:10])
    return shown + (" ..." if len(rows) > 10 else "")


def _check_table(path: Path, x: np.ndarray, y, first_line: int | None) -> np.ndarray | None:
    """Rows, finite values and integer labels, named by the file's rows (or CSV lines)."""
    if x.ndim == 0 or len(x) < 2:
        raise ValueError(f"{path} has {0 if x.ndim == 0 else len(x)} row(s): a train/test split "
                         "needs at least 2 rows (one data point per row)")
    if x[0].size == 0:
        raise ValueError(f"{path} has rows of shape {x.shape[1:]}: no values per row")
    where = "line(s)" if first_line is not None else "row(s) (0-based)"
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(bad):
        raise ValueError(f"{path} has NaN or infinite values in {len(bad)} {where}: "
                         f"{_row_list(bad, first_line or 0)}; drop or impute them")
    if y is None:
        return None
    y = np.asarray(y)
    if y.shape != (len(x),) or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise ValueError(f"{path}: labels of shape {y.shape} and dtype {y.dtype}; labels are one "
                         f"whole number per row, shape ({len(x)},)")
    whole = np.isfinite(y) & (y == np.round(y)) if np.issubdtype(y.dtype, np.inexact) \
        else np.ones(len(y), dtype=bool)
    if not whole.all():
        bad = np.flatnonzero(~whole)
        raise ValueError(f"{path}: labels are class numbers (whole numbers), but {len(bad)} "
                         f"{where} hold others: {_row_list(bad, first_line or 0)} (e.g. "
                         f"{y[bad[0]].item()!r}); real-valued responses are not labels")
    return y.astype(np.int64)


def load_array(path: str | Path, *, test_fraction: float = 0.2, seed: int = 0,
               header: bool | None = None) -> Dataset:
    """A numeric table from ``.npy``, ``.npz`` (array ``x``, optional integer labels ``y``) or
    ``.csv``, split train/test.

    A CSV file's first row is a header unless every cell of it is a number (``header``
    overrides the detection); with a header, a column named ``label`` becomes the labels.
    Rows with NaN or infinite values and labels that are not whole numbers are errors naming
    the file's rows (for a CSV file, its lines).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; a data file is a .npy, .npz or .csv file "
                         "(a folder of MNIST IDX files is mnist:DIR)")
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    first_line = None
    if path.suffix in (".npy", ".npz"):
        x, y = _read_numpy(path)
    elif path.suffix == ".csv":
        x, y, header = _read_csv(path, header)
        first_line = 2 if header else 1
    else:
        raise ValueError(f"{path}: unsupported data file type {path.suffix!r} (.npy, .npz, .csv)")
    if not np.issubdtype(np.asarray(x).dtype, np.number) and np.asarray(x).dtype != bool:
        raise ValueError(f"{path}: data of dtype {np.asarray(x).dtype} is not numeric")
    x = np.asarray(x, dtype=np.float32)
    y = _check_table(path, x, y, first_line)
    x = x.reshape(len(x), -1)
    try:
        xtr, xte, ytr, yte = _split(x, y, test_fraction, seed)
    except ValueError as exc:  # scikit-learn: too few rows or too few rows of a class
        raise ValueError(f"{path}: {len(x)} rows cannot be split {1 - test_fraction:.0%} / "
                         f"{test_fraction:.0%} into train and test ({exc})") from None
    return _dataset(xtr, xte, ytr, yte, name=path.stem, info={"source": str(path)})
