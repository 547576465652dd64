"""The model zoo: generative Pyro programs (imported as ``ppl_vae.models``).

Every entry is a ``PyroModule`` called as ``model(*batch)``, with a ``from_dataset(dataset,
**options)`` constructor used by the CLI, and is registered under the entry-point group
``ppl_vae.models`` in ``pyproject.toml``.
"""

from .vae import VAE

__all__ = ["VAE"]
