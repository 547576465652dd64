"""The model zoo: generative Pyro programs (imported as ``ppl_vae.models``).

Every entry is a ``PyroModule`` called as ``model(*batch)``, with a ``from_dataset(dataset,
**options)`` constructor used by the CLI, and is registered under the entry-point group
``ppl_vae.models`` in ``pyproject.toml``.
"""

from .conditional import ConditionalVAE
from .conv import ConvVAE
from .eight_schools import EightSchools
from .global_local import GlobalLocalVAE
from .mixture import MixturePriorVAE
from .ppca import PPCA
from .regression import BayesianRegression
from .vae import VAE

__all__ = [
    "VAE",
    "BayesianRegression",
    "ConditionalVAE",
    "ConvVAE",
    "EightSchools",
    "GlobalLocalVAE",
    "MixturePriorVAE",
    "PPCA",
]
