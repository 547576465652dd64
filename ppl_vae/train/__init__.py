"""Stage 4 of the flow: training. State in, state out (:mod:`~ppl_vae.train.state`), ``fit`` a
thin loop around it (:mod:`~ppl_vae.train.loop`), checkpoints, data-parallel runs, run folders.
"""

from ppl_vae.train.state import TrainState, init_state, update

__all__ = ["TrainState", "init_state", "update"]
