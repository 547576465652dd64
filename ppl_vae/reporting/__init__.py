"""Stage 7 of the flow: the report. One self-contained HTML page (:mod:`~ppl_vae.reporting.page`)
with its figures (:mod:`~ppl_vae.reporting.figures`), for programs or a run folder
(:mod:`~ppl_vae.reporting.run`).
"""
