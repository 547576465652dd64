"""ppl-vae: variational autoencoders and amortized variational inference as plain Pyro programs.

Train with the ELBO estimator of your choice (``fit``), measure it (``evaluate``), and check
the posterior you got (``diagnose``, ``report``).

The subpackages follow the data flow, each using only those before it:
``compat`` -> ``data`` -> ``storage`` -> ``parallel`` -> ``programs`` -> ``estimators`` ->
``recording`` -> ``train`` -> ``evaluation`` -> ``diagnostics`` -> ``reporting`` -> ``runs`` ->
``cli`` (see docs/architecture.md).
"""

import sys as _sys

from ppl_vae.data import datasets
from ppl_vae.data.streaming import DiskData, write_shards
from ppl_vae.diagnostics import (
    diagnose,
    inference_gaps,
    latent_table,
    log_evidence,
    mutual_information,
    pointwise_psis,
    sbc,
)
from ppl_vae.diagnostics.compare import Comparison, compare
from ppl_vae.estimators.explain import explain, monte_carlo_kl_sites
from ppl_vae.estimators.registry import ESTIMATORS, EstimatorSpec, make_elbo, register_estimator
from ppl_vae.estimators.variance import gradient_variance, snr_by_particles
from ppl_vae.evaluation.arviz import to_arviz
from ppl_vae.evaluation.latents import latents
from ppl_vae.evaluation.metrics import Evaluation, evaluate
from ppl_vae.programs.analysis import ProgramAnalysis, analyze_programs
from ppl_vae.reporting.page import report
from ppl_vae.train.loading import load
from ppl_vae.train.loop import fit
from ppl_vae.train.objective import FreeBits, KLWarmup, ObjectiveTerm
from ppl_vae.train.options import Checkpoint, Compute, Loop, Objective, Parallel
from ppl_vae.train.result import FitResult, TrainingDivergedError
from ppl_vae.train.state import TrainState, init_state, update

# ``import ppl_vae.datasets`` keeps working: the data sets module is public under its old name.
_sys.modules[__name__ + ".datasets"] = datasets

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "Compute",
    "FreeBits",
    "KLWarmup",
    "Loop",
    "Objective",
    "ObjectiveTerm",
    "Parallel",
    "ESTIMATORS",
    "EstimatorSpec",
    "Evaluation",
    "FitResult",
    "ProgramAnalysis",
    "analyze_programs",
    "TrainState",
    "TrainingDivergedError",
    "datasets",
    "evaluate",
    "explain",
    "fit",
    "load",
    "gradient_variance",
    "init_state",
    "latents",
    "make_elbo",
    "register_estimator",
    "monte_carlo_kl_sites",
    "update",
    "DiskData",
    "write_shards",
    "diagnose",
    "compare",
    "Comparison",
    "inference_gaps",
    "latent_table",
    "log_evidence",
    "mutual_information",
    "pointwise_psis",
    "report",
    "sbc",
    "snr_by_particles",
    "to_arviz",
]
