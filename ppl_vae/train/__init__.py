"""Stage 4 of the flow: training. State in, state out (:mod:`~ppl_vae.train.state`), ``fit`` a
thin loop around it (:mod:`~ppl_vae.train.loop`) made of its options, declared once
(:mod:`~ppl_vae.train.options`, checked by :mod:`~ppl_vae.train.arguments`), data preparation
(:mod:`~ppl_vae.train.prepare`), one epoch (:mod:`~ppl_vae.train.epoch`), built-in callbacks
(:mod:`~ppl_vae.train.callbacks`) and resume (:mod:`~ppl_vae.train.resume`); checkpoints,
data-parallel training on the engine of :mod:`ppl_vae.parallel`, the run folder's format
(:mod:`~ppl_vae.train.run_dir`; atomic files, the manifest and the lock are
:mod:`ppl_vae.storage`, the jobs on a folder :mod:`ppl_vae.runs`).
"""

from ppl_vae.train.state import TrainState, init_state, update

__all__ = ["TrainState", "init_state", "update"]
