"""Stage 4 of the flow: training. State in, state out (:mod:`~ppl_vae.train.state`), ``fit`` a
thin loop around it (:mod:`~ppl_vae.train.loop`) made of its options, declared once
(:mod:`~ppl_vae.train.options`, checked by :mod:`~ppl_vae.train.arguments`), data preparation
(:mod:`~ppl_vae.train.prepare`), one epoch (:mod:`~ppl_vae.train.epoch`), built-in callbacks (:mod:`~ppl_vae.train.callbacks`) and resume
(:mod:`~ppl_vae.train.resume`); checkpoints, data-parallel runs, run folders.
"""

from ppl_vae.train.state import TrainState, init_state, update

__all__ = ["TrainState", "init_state", "update"]
