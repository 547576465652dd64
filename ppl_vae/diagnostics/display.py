"""How a :class:`~ppl_vae.diagnostics.summary.Diagnostics` shows itself: one line in a console,
the verdicts table in a notebook (the full tables stay in its attributes)."""

from __future__ import annotations

import html
from collections import Counter

from ppl_vae.diagnostics.verdicts import Status

__all__ = ["short_repr", "checks_html"]


def _counts(diag) -> str:
    """``5 ok, 1 warning, 1 not computed``: the verdicts counted by status."""
    checks = diag.checks
    if checks is None or not len(checks) or "status" not in checks:
        return "no checks"
    counts = Counter(v.status for v in diag.verdicts)
    return ", ".join(f"{counts[s]} {s.value}" for s in Status if counts[s])


def short_repr(diag) -> str:
    """``Diagnostics(points=..., checks: 5 ok, 1 warning; max k-hat ..., active units a/b)``."""
    k = diag.pointwise["k_hat"].max() if "k_hat" in diag.pointwise else float("nan")
    units = diag.latent["active"] if "active" in diag.latent else None
    active = f", active units {int(units.sum())}/{len(units)}" if units is not None else ""
    return (f"Diagnostics(points={diag.num_points}, checks: {_counts(diag)}; "
            f"max k-hat {k:.3g}{active})")


def checks_html(diag) -> str:
    """The verdicts: one row per check with its status, why and what to do next."""
    header = f"<p><b>{html.escape(short_repr(diag))}</b></p>"
    if diag.checks is None or not len(diag.checks):
        return header
    return header + diag.checks.to_html(index=False, float_format=lambda v: f"{v:.4g}")
