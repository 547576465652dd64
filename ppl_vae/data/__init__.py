"""Stage 1 of the flow: data. Arrays, tensors and files become the tensors programs are run on.

- :mod:`~ppl_vae.data.tensors`: any array-like to checked tensors, batching;
- :mod:`~ppl_vae.data.datasets`: the bundled and synthetic data sets, local IDX/array files;
- :mod:`~ppl_vae.data.streaming`: data sets larger than memory, read from disk shards.
"""

from ppl_vae.data import datasets
from ppl_vae.data.streaming import DiskData, write_shards
from ppl_vae.data.tensors import as_tensors, check_finite, iter_batches, num_rows, resolve_device

__all__ = [
    "DiskData", "as_tensors", "check_finite", "datasets", "iter_batches", "num_rows",
    "resolve_device", "write_shards",
]
