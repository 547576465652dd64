"""Run-folder jobs: the work ``ppl-vae`` and Python callers share.

Train into a folder (:func:`train_into`, inside :func:`writing`, the folder's lock), evaluate
it (:func:`evaluate_run`), diagnose it (:func:`diagnose_run`) and write its report
(:func:`report_run`). The folder's format itself (``config.json``, checkpoints, the manifest)
is written by ``fit`` and :mod:`ppl_vae.storage`; this stage comes after ``reporting`` in the
data flow and before the CLI, which only parses arguments and calls these functions.
"""

from ppl_vae.runs.diagnose import (
    checkpoint_digest,
    diagnose_run,
    read_diagnostics,
    read_tree,
    write_diagnostics,
    write_tree,
)
from ppl_vae.runs.evaluate import evaluate_run
from ppl_vae.runs.report import report_run
from ppl_vae.runs.train import is_writer, print_plan, train_into, use_threads, writing

__all__ = ["checkpoint_digest", "diagnose_run", "evaluate_run", "is_writer", "print_plan",
           "read_diagnostics", "read_tree", "report_run", "train_into", "use_threads",
           "write_diagnostics", "write_tree", "writing"]
