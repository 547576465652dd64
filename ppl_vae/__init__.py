"""ppl-vae: variational autoencoders and amortized variational inference as plain Pyro programs.

Train with the ELBO estimator of your choice (``fit``), measure it (``evaluate``), and check
the posterior you got.
"""

from ppl_vae import datasets
from ppl_vae.arviz import to_arviz
from ppl_vae.diagnostics import (
    diagnose,
    inference_gaps,
    latent_table,
    log_evidence,
    mutual_information,
    pointwise_psis,
    sbc,
)
from ppl_vae.elbo import ESTIMATORS, make_elbo
from ppl_vae.evaluate import Evaluation, evaluate
from ppl_vae.explain import explain, monte_carlo_kl_sites
from ppl_vae.fit import fit
from ppl_vae.report import report
from ppl_vae.result import FitResult, TrainingDivergedError
from ppl_vae.streaming import DiskData, write_shards
from ppl_vae.train import TrainState, init_state, update
from ppl_vae.variance import gradient_variance

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "Evaluation",
    "FitResult",
    "TrainState",
    "TrainingDivergedError",
    "datasets",
    "evaluate",
    "explain",
    "fit",
    "gradient_variance",
    "init_state",
    "make_elbo",
    "monte_carlo_kl_sites",
    "update",
    "DiskData",
    "write_shards",
    "diagnose",
    "inference_gaps",
    "latent_table",
    "log_evidence",
    "mutual_information",
    "pointwise_psis",
    "report",
    "sbc",
    "to_arviz",
]
