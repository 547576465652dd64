"""Stage 7 of the flow: the report. One self-contained HTML page (:mod:`~ppl_vae.reporting.page`)
with its figures (:mod:`~ppl_vae.reporting.figures`); the report of a run folder is a run-folder
job (:func:`ppl_vae.runs.report_run`).
"""
