"""The guide zoo: amortized and global variational families (imported as ``ppl_vae.guides``).

Every entry is a ``PyroModule`` called as ``guide(*batch)``, with a ``from_dataset(dataset,
**options)`` constructor used by the CLI, and is registered under the entry-point group
``ppl_vae.guides`` in ``pyproject.toml``. ``LocalGlobalGuide`` (needs the model, so Python only)
joins any amortized local guide with an autoguide over the global latents.
"""

from .combined import GlobalLocalGuide, LocalGlobalGuide, global_part
from .conditional import ConditionalEncoder
from .conv import ConvEncoder
from .flow import FlowEncoder
from .low_rank import LowRankEncoder
from .mean_field import EightSchoolsGuide, RegressionGuide
from .mlp import MLPEncoder

__all__ = [
    "MLPEncoder",
    "ConditionalEncoder",
    "ConvEncoder",
    "EightSchoolsGuide",
    "FlowEncoder",
    "GlobalLocalGuide",
    "LocalGlobalGuide",
    "LowRankEncoder",
    "RegressionGuide",
    "global_part",
]
