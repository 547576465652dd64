"""Data that stays on disk: rows read batch by batch from memory-mapped ``.npy`` files.

A :class:`DiskData` is a map-style ``torch.utils.data.Dataset`` over one ``.npy`` file or a
directory of ``.npy`` shards (or a tuple of such members, passed to the programs as
``model(*batch)``). Only the rows of the current batch are read into memory. Batches are drawn
with torch's ``DistributedSampler`` -- the sampler Lightning installs for data-parallel runs --
so that each process reads its own shard of every epoch's permutation.

The epoch permutation is ``randperm(N)`` from a generator seeded with
``sampler_seed(seed) + epoch``, the same permutation :func:`ppl_vae.fit` uses for data in
memory: with one process, a :class:`DiskData` run sees exactly the batches of an in-memory run,
and with ``W`` processes and local batch ``B / W`` the union of the processes' ``k``-th batches is
the single-process ``k``-th batch of size ``B``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = [
    "DiskData", "EpochBatches", "epoch_batches", "sampler_seed", "sequential_batches",
    "write_shards",
]


def sampler_seed(seed: int) -> int:
    """Seed of the ``DistributedSampler`` for a run seeded with ``seed`` (the sampler adds the
    epoch; ``ppl_vae.fit`` seeds its in-memory permutation with the same number)."""
    return int(seed) * 1_000_003


def _member_files(member) -> list[Path]:
    if isinstance(member, str | Path):
        path = Path(member)
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise ValueError(f"DiskData: directory {str(path)!r} holds no .npy shards")
            return files
        if not path.exists():
            raise ValueError(f"DiskData: {str(path)!r} does not exist")
        if path.suffix != ".npy":
            raise ValueError(f"DiskData: {str(path)!r} is not a .npy file or a directory of them")
        return [path]
    if isinstance(member, Sequence) and member and all(isinstance(m, str | Path) for m in member):
        return [f for m in member for f in _member_files(m)]
    raise ValueError(
        f"DiskData: each member must be a .npy path, a directory of .npy shards, or a list of "
        f"paths; got {type(member).__name__}"
    )


class DiskData(Dataset):
    """Rows of ``.npy`` files, read on demand through NumPy memory maps.

    Parameters
    ----------
    *members : path, directory, or list of paths
        Each member is one array of ``N`` rows, possibly split into shards along rows (the
        shards of a directory are taken in sorted file-name order). Several members form a tuple
        ``(x, y, ...)``: they must have the same total number of rows.
    dtype : torch.dtype, optional
        Floating dtype of the batches (integer members keep their dtype). Default: float32.
    num_workers : int
        ``DataLoader`` worker processes that read ahead (0: read in the training process).

    Notes
    -----
    ``len(data) == N``; ``data.__getitems__(indices)`` returns a tuple of tensors of shape
    ``(len(indices), ...)``. Non-finite values are reported (with their global row numbers) when
    a batch holding them is read, since a stream cannot be checked ahead of training. Pickling
    keeps only the paths, so worker processes open their own memory maps.
    """

    def __init__(self, *members, dtype: torch.dtype | None = None, num_workers: int = 0):
        if not members:
            raise ValueError("DiskData needs at least one member (a .npy file or a directory)")
        self.files = [_member_files(m) for m in members]
        self.dtype = dtype if dtype is not None else torch.float32
        if not self.dtype.is_floating_point:
            raise ValueError(f"DiskData: dtype must be a floating dtype, got {dtype}")
        if int(num_workers) < 0:
            raise ValueError(f"DiskData: num_workers must be >= 0, got {num_workers}")
        self.num_workers = int(num_workers)
        self._arrays = None
        offsets = []
        for files in self.files:
            rows = [self._open(f).shape[0] for f in files]
            offsets.append(np.concatenate([[0], np.cumsum(rows)]).astype(np.int64))
        totals = [int(o[-1]) for o in offsets]
        if len(set(totals)) != 1:
            raise ValueError(f"DiskData: members have different numbers of rows: {totals}")
        if totals[0] == 0:
            raise ValueError("DiskData: the data has 0 rows")
        self.offsets = offsets

    @staticmethod
    def _open(path: Path) -> np.ndarray:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.ndim == 0:
            raise ValueError(f"DiskData: {str(path)!r} holds a scalar; rows must be data points")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise ValueError(f"DiskData: {str(path)!r} has non-numeric dtype {array.dtype}")
        return array

    def _maps(self) -> list[list[np.ndarray]]:
        if self._arrays is None:
            self._arrays = [[self._open(f) for f in files] for files in self.files]
        return self._arrays

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return int(self.offsets[0][-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[0] for t in self.__getitems__([index]))

    def __getitems__(self, indices) -> tuple[torch.Tensor, ...]:
        idx = np.asarray(indices, dtype=np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"DiskData: row index out of range for {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        out = []
        for m, (shards, offsets) in enumerate(zip(self._maps(), self.offsets, strict=True)):
            which = np.searchsorted(offsets, idx, side="right") - 1
            first = shards[0]
            rows = np.empty((idx.size, *first.shape[1:]), dtype=first.dtype)
            for s in np.unique(which):
                sel = which == s
                local = idx[sel] - offsets[s]
                # Sorted reads walk the memory map forwards (page-cache friendly); put them back.
                order = np.argsort(local, kind="stable")
                block = shards[s][local[order]]
                rows_sel = np.empty_like(block)
                rows_sel[order] = block
                rows[sel] = rows_sel
            tensor = torch.from_numpy(rows)
            if tensor.is_floating_point() or tensor.dtype == torch.bool:
                tensor = tensor.to(self.dtype)
                bad = ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
                if bool(bad.any()):
                    label = "data" if len(self.files) == 1 else f"data[{m}]"
                    raise ValueError(
                        f"{label} has NaN or infinite values in row(s) "
                        f"{idx[bad.numpy()][:10].tolist()}"
                    )
            out.append(tensor)
        return tuple(out)

    def head(self, rows: int) -> tuple[torch.Tensor, ...]:
        """The first ``rows`` rows (all of them if fewer), as a tuple of tensors."""
        return self.__getitems__(np.arange(min(int(rows), len(self))))

    def __repr__(self) -> str:
        shards = [len(f) for f in self.files]
        return f"DiskData(rows={len(self)}, members={len(self.files)}, shards={shards})"


def write_shards(array, directory, *, rows_per_shard: int, prefix: str = "shard") -> list[Path]:
    """Write ``array`` (rows are data points) as ``.npy`` shards of ``rows_per_shard`` rows.

    Returns the shard paths, named so that sorted order is row order.
    """
    array = np.asarray(array)
    if int(rows_per_shard) < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    count = -(-array.shape[0] // int(rows_per_shard))
    width = max(5, len(str(count)))
    paths = []
    for i in range(count):
        path = directory / f"{prefix}-{i:0{width}d}.npy"
        np.save(path, array[i * rows_per_shard : (i + 1) * rows_per_shard])
        paths.append(path)
    return paths


def _as_batch(batch):
    # DiskData.__getitems__ already returns the batch as a tuple of tensors.
    return batch


def _place(batch, device, dtype):
    return tuple(
        t.to(device=device, dtype=dtype if t.is_floating_point() and dtype is not None else t.dtype)
        for t in batch
    )


def _local_size(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ValueError(
            f"batch_size={batch_size} (the global batch) must be divisible by the number of "
            f"processes ({world_size}), so that each process takes the same share"
        )
    return batch_size // world_size


class EpochBatches:
    """This process's batches, one epoch per call: ``stream(epoch)``, shuffled unless the batch
    is the whole data set.

    One ``DataLoader`` serves every epoch (``DistributedSampler.set_epoch`` reshuffles it), so
    with ``DiskData(..., num_workers=k)`` the reader processes start once, not once an epoch.

    Parameters
    ----------
    data : DiskData or tuple of tensors
        ``N`` rows.
    batch_size : int
        Global batch size ``B``; each of the ``world_size`` processes takes ``B / world_size``.
    seed : int
        With the epoch, fixes the permutation (a resumed run reproduces it).
    rank, world_size : int
        This process and the number of processes.
    device, dtype : optional
        Where to put streamed batches and their floating dtype (in-memory tensors are cut on
        their own device).

    Notes
    -----
    Each call yields local batches of shape ``(B / world_size, ...)`` (the last may be smaller).
    Every process gets the same number of batches (``DistributedSampler`` pads by repeating a
    few rows), or DDP would wait forever for the missing ones. A full batch (``B = N``) keeps the
    rows in their order: a guide with one parameter per row (``pyro.param`` of shape ``(N, ...)``,
    an autoguide of local latents) must meet row ``i`` at position ``i`` in every step.
    """

    def __init__(self, data, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 device=None, dtype=None):
        self.data, self.device, self.dtype = data, device, dtype
        self.local = _local_size(int(batch_size), int(world_size))
        rows = len(data) if isinstance(data, DiskData) else int(data[0].shape[0])
        self.sampler = DistributedSampler(
            range(rows), num_replicas=world_size, rank=rank, shuffle=int(batch_size) < rows,
            seed=sampler_seed(seed),
        )
        self.loader = None
        if isinstance(data, DiskData):
            # Its own generator: a DataLoader otherwise draws its worker seed from the global
            # RNG that the sample sites use, and a streamed run would drift from an in-memory one.
            self.loader = DataLoader(
                data, batch_size=self.local, sampler=self.sampler, collate_fn=_as_batch,
                num_workers=data.num_workers, persistent_workers=data.num_workers > 0,
                generator=torch.Generator().manual_seed(sampler_seed(seed)),
            )

    def __call__(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        self.sampler.set_epoch(int(epoch))
        if self.loader is not None:
            for batch in self.loader:
                yield _place(batch, self.device, self.dtype)
            return
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.data[0].device)
        for start in range(0, order.numel(), self.local):
            idx = order[start : start + self.local]
            yield tuple(t.index_select(0, idx) for t in self.data)


def epoch_batches(data, batch_size: int, *, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1, device=None, dtype=None):
    """The batches of one epoch: ``EpochBatches(data, batch_size, seed=seed, ...)(epoch)``."""
    return EpochBatches(data, batch_size, seed=seed, rank=rank, world_size=world_size,
                        device=device, dtype=dtype)(epoch)


def sequential_batches(
    data, batch_size: int, *, rank: int = 0, world_size: int = 1, device=None, dtype=None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches of rows ``rank, rank + world_size, ...`` in order, without padding (each row is
    seen by exactly one process: for evaluation sums)."""
    rows = len(data) if isinstance(data, DiskData) else int(data[0].shape[0])
    mine = np.arange(rank, rows, world_size)
    for start in range(0, mine.size, int(batch_size)):
        idx = mine[start : start + int(batch_size)]
        if isinstance(data, DiskData):
            yield _place(data.__getitems__(idx), device, dtype)
        else:
            index = torch.from_numpy(idx).to(data[0].device)
            yield tuple(t.index_select(0, index) for t in data)
