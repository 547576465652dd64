"""Stage 6 of the flow: diagnostics. Did the variational inference work? Per-data-point checks of a trained guide.

- :mod:`~ppl_vae.diagnostics.psis`: Pareto k-hat of the importance ratios per data point;
- :mod:`~ppl_vae.diagnostics.gaps`: log-evidence, ELBO gap, amortization/approximation gaps;
- :mod:`~ppl_vae.diagnostics.latent`: KL per dimension, active units, mutual information;
- :mod:`~ppl_vae.diagnostics.sbc`: simulation-based calibration;
- :mod:`~ppl_vae.diagnostics.calibration`: rank ECDF with simultaneous bands, interval coverage,
  z-scores and contraction;
- :mod:`~ppl_vae.diagnostics.collapse`: reconstruction against the data mean, reference values;
- :mod:`~ppl_vae.diagnostics.convergence`: is the ELBO still rising at the end of training;
- :mod:`~ppl_vae.diagnostics.verdicts`: the verdicts of those checks (``Verdict``, ``Status``),
  with advice;
- :mod:`~ppl_vae.diagnostics.prior`: E[x | z] from the prior and the global latents' prior
  moments, computed here for the report to render;
- :mod:`~ppl_vae.diagnostics.summary`: ``diagnose`` runs them all with verdicts.
"""

from ppl_vae.diagnostics.calibration import calibration_table
from ppl_vae.diagnostics.collapse import reconstruction_gain
from ppl_vae.diagnostics.convergence import convergence
from ppl_vae.diagnostics.gaps import inference_gaps, log_evidence
from ppl_vae.diagnostics.latent import (
    active_units,
    kl_summary,
    latent_table,
    mutual_information,
)
from ppl_vae.diagnostics.psis import KHAT_THRESHOLDS, khat_shares, pointwise_psis, psis
from ppl_vae.diagnostics.sbc import SBCResult, sbc
from ppl_vae.diagnostics.summary import Diagnostics, diagnose, posterior_summary
from ppl_vae.diagnostics.verdicts import Status, Verdict

__all__ = [
    "KHAT_THRESHOLDS",
    "Diagnostics",
    "SBCResult",
    "Status",
    "Verdict",
    "active_units",
    "calibration_table",
    "convergence",
    "diagnose",
    "inference_gaps",
    "khat_shares",
    "kl_summary",
    "latent_table",
    "log_evidence",
    "mutual_information",
    "pointwise_psis",
    "posterior_summary",
    "psis",
    "reconstruction_gain",
    "sbc",
]
