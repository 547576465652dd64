"""Stage 5 of the flow: evaluation. Per-draw, per-point log-densities of trained programs
(:mod:`~ppl_vae.evaluation.pointwise`), the ELBO / IWAE table (:mod:`~ppl_vae.evaluation.metrics`)
and the export to ArviZ (:mod:`~ppl_vae.evaluation.arviz`).
"""
