"""The recording wing: a training step recorded once as a flat graph of tensor ops, replayed,
and compiled by Inductor (in a background process under ``jit="auto"``).

It sits between the estimators and training in the data flow: the estimator registry never
imports it; training opts into it by importing this package, which installs its recorder for
:func:`ppl_vae.make_elbo`'s ``jit != False``. Every private Pyro and torch name it uses is in
:mod:`ppl_vae.recording.private`.

Modules: :mod:`~ppl_vae.recording.jit` (the recorded ELBO), :mod:`~ppl_vae.recording.compile`
(record once, check, replay), :mod:`~ppl_vae.recording.graph_rewrites`,
:mod:`~ppl_vae.recording.guards` and :mod:`~ppl_vae.recording.value_reads` (what a recording
must honour), :mod:`~ppl_vae.recording.inductor`, :mod:`~ppl_vae.recording.fused` and
:mod:`~ppl_vae.recording.background` (compiling), :mod:`~ppl_vae.recording.padding` (one graph
per run), :mod:`~ppl_vae.recording.summary` (what a run's step did).
"""

from ppl_vae.recording import jit as jit  # installs the recorder (see the docstring)
