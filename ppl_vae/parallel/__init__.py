"""The data-parallel engine (Lightning Fabric) that training and diagnostics both use.

It sits after ``storage`` in the data flow and knows nothing of training or diagnostics: see
:mod:`ppl_vae.parallel.engine`.
"""

from ppl_vae.parallel.engine import Engine, launch, make_fabric, wants_engine

__all__ = ["Engine", "launch", "make_fabric", "wants_engine"]
