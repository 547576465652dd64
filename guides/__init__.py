"""The guide zoo: amortized and global variational families (imported as ``ppl_vae.guides``).

Every entry is a ``PyroModule`` called as ``guide(*batch)``, with a ``from_dataset(dataset,
**options)`` constructor used by the CLI, and is registered under the entry-point group
``ppl_vae.guides`` in ``pyproject.toml``.
"""

from .mlp import MLPEncoder

__all__ = ["MLPEncoder"]
