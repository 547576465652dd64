"""``report``: one self-contained HTML page (figures embedded as base64 PNG) answering "did my
variational inference work?" for a trained model and guide, readable offline."""

from __future__ import annotations

import datetime
import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ppl_vae.data.tensors import as_tensors
from ppl_vae.diagnostics import diagnose
from ppl_vae.diagnostics.verdicts import Status, Verdict
from ppl_vae.evaluation.arviz import runs_from, split_result
from ppl_vae.evaluation.metrics import evaluate
from ppl_vae.programs.util import program_dtype
from ppl_vae.reporting import figures as figs
from ppl_vae.reporting.calibration import sbc_section
from ppl_vae.reporting.display import ReportPath
from ppl_vae.reporting.html import img as _img
from ppl_vae.reporting.html import legend
from ppl_vae.reporting.html import table as _table
from ppl_vae.reporting.posterior import posterior_section
from ppl_vae.reporting.settings import settings_table
from ppl_vae.storage.files import write_bytes
from ppl_vae.train.result import FitResult

__all__ = ["report"]

_STATUS_COLOR = {"ok": "#1a7f37", "warning": "#b35900", "failing": "#c62828"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:24px auto;padding:0 16px;color:#1f2328;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;
margin-top:32px}.sub{color:#57606a;margin-top:4px}
table{border-collapse:collapse;margin:8px 0;font-size:0.92em}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}.status{font-weight:600;text-transform:uppercase;font-size:0.85em}
figure{margin:12px 0}figcaption{color:#57606a;font-size:0.9em}img{max-width:100%}
.verdict{padding:10px 14px;border-radius:6px;margin:12px 0;color:#fff;font-weight:600}
.next{margin:8px 0 16px;padding:8px 14px;border-left:4px solid #b35900;background:#fff8f0}
.next li{margin:2px 0}tr:target{background:#fff3cd}
.scroll{max-width:100%;overflow-x:auto}.legend{color:#57606a;font-size:0.85em;margin-top:2px}
"""


def anchor(check: str) -> str:
    """The HTML id of a check's row in the verdict table."""
    return "check-" + re.sub(r"[^a-z0-9]+", "-", str(check).lower()).strip("-")


def _checks_html(checks: pd.DataFrame) -> str:
    rows = []
    for _, r in checks.iterrows():
        color = _STATUS_COLOR[r["status"]]
        advice = r.get("advice", "")
        advice = advice if isinstance(advice, str) else ""
        rows.append(f"<tr id='{anchor(r['check'])}'><td>{html.escape(r['check'])}</td>"
                    f"<td>{html.escape(str(r['value']))}</td><td class='status' "
                    f"style='color:{color}'>{r['status']}</td><td>{html.escape(r['why'])}</td>"
                    f"<td>{html.escape(advice)}</td></tr>")
    return ("<table><tr><th>check</th><th>value</th><th>verdict</th><th>why</th>"
            "<th>what to do</th></tr>" + "".join(rows) + "</table>")


def _next_steps(checks: pd.DataFrame) -> str:
    """What to do next, one item per failing or warning check (failing first), each linked to
    its row in the verdict table."""
    if "advice" not in checks:
        return ""
    items = []
    for status in ("failing", "warning"):
        for _, r in checks[checks["status"] == status].iterrows():
            advice = r["advice"] if isinstance(r["advice"], str) else ""
            if advice:
                items.append(f"<li><a href='#{anchor(r['check'])}'>{html.escape(r['check'])}"
                             f"</a> ({status}): {html.escape(advice)}</li>")
    return ("<div class='next'><b>What to do next</b><ul>" + "".join(items) + "</ul></div>"
            if items else "")


def _overall(checks: pd.DataFrame) -> tuple[str, str]:
    statuses = [Verdict.from_row(r).status for r in checks.to_dict("records")]
    worst = max(statuses, key=lambda s: s.severity, default=Status.PASS).label
    text = {"ok": "All checks passed: the guide is a good posterior approximation here.",
            "warning": "Usable with care: some checks raise warnings (see below).",
            "failing": "Inference did not work well: at least one check is failing."}[worst]
    return worst, text


def _images(tree, prior, image_shape, count=10):
    if image_shape is None:
        return None
    obs = json.loads(tree.attrs.get("observed_sites", "[]"))
    if not obs or int(np.prod(image_shape)) != int(np.prod(tree["observed_data"][obs[0]].shape[1:])):
        return None
    data = tree["observed_data"][obs[0]].values[:count]
    pp = tree["posterior_predictive"] if "posterior_predictive" in tree.children else None
    recon = None
    if pp is not None and f"{obs[0]}_mean" in pp:
        recon = pp[f"{obs[0]}_mean"].isel(chain=0).mean("draw").values[:count]
    rows = {"data": data.reshape(len(data), -1), "reconstruction": None, "prior sample": None}
    if recon is not None:
        rows["reconstruction"] = recon.reshape(len(recon), -1)
    if prior is not None:  # computed by diagnose: the report renders, it does not run the model
        rows["prior sample"] = prior.to_numpy()[:count]
    return figs.image_grid(rows, image_shape)


def _latent_means(diagnostics, labels):
    """Guide means of every point (the diagnostics' per-point table) or, for a tree given
    without it, of the exported points, with their labels."""
    if diagnostics.latent_means is not None:
        return diagnostics.latent_means.drop(columns="point").to_numpy(), labels
    tree = diagnostics.tree
    sites = json.loads(tree.attrs.get("local_sites", "[]"))
    if not sites:
        return None, labels
    z = tree["posterior"][sites[0]].isel(chain=0).mean("draw").values
    plate = tree.attrs.get("data_plate", "data")
    if labels is not None and len(labels) == tree.attrs.get("num_points", -1):
        labels = np.asarray(labels)[tree["posterior"][plate].values]
    return z.reshape(z.shape[0], -1), labels


def report(model=None, guide=None, data=None, *, out="report.html", runs=None,
           diagnostics=None, history=None, settings=None, evaluation=None, image_shape=None,
           labels=None, title: str | None = None, num_draws: int = 200, gaps: bool = True,
           calibrate: bool = True, data_plate: str | None = None, reference=None,
           result=None) -> Path:
    """Write the diagnostics report of a trained model and guide as one HTML file.

    Parameters
    ----------
    model, guide, data, runs, num_draws, data_plate
        As for :func:`ppl_vae.to_arviz`.
    out : path
        The HTML file to write.
    diagnostics : ppl_vae.diagnostics.Diagnostics, optional
        Reuse a :func:`~ppl_vae.diagnostics.diagnose` result instead of computing it.
    history : pandas.DataFrame, optional
        Per-epoch ``train_elbo`` / ``val_elbo`` for the training curves.
    settings : dict, optional
        Training settings shown with the estimator plan.
    evaluation : dict or Evaluation, optional
        ELBO / IWAE / KL / reconstruction table (computed when not given).
    image_shape : tuple, optional
        For image data: draws data, reconstructions and prior samples as images.
    labels : array, optional
        One label per data point, to colour the 2-D view of the latent means.
    reference : Diagnostics or mapping, optional
        A trained model of the same kind, as for :func:`~ppl_vae.diagnostics.diagnose`.
    result : FitResult, optional
        What ``fit`` returned, instead of ``model`` and ``guide`` (its history and settings
        are then used); a ``FitResult`` given as ``model`` still works, with a
        ``FutureWarning``.

    Returns
    -------
    ReportPath
        The written file (a :class:`pathlib.Path`; in a notebook it shows the page inline).
        Every figure is embedded, so the file can be mailed or archived.
    """
    model, result = split_result(model, guide, result)
    chains = runs_from(model, guide, runs, result)
    m0, g0, s0 = chains[0]
    first = result if runs is None else runs[0]
    if history is None and isinstance(first, FitResult):
        history = first.history
    settings = dict(settings if settings is not None else s0)
    if diagnostics is None:
        diagnostics = diagnose(model, guide, data, runs=runs, result=result,
                               num_draws=num_draws, gaps=gaps,
                               calibrate=calibrate, data_plate=data_plate, settings=settings,
                               history=history, reference=reference)
    if evaluation is None:
        evaluation = evaluate(m0, g0, data, data_plate=data_plate)
    dtype, device = program_dtype(m0, g0)
    batch = as_tensors(data, dtype=dtype, device=device, name="data")
    summary = diagnostics.summary()
    worst_rows = diagnostics.pointwise.sort_values("k_hat", ascending=False).head(10)
    settings.setdefault("model", _program_name(m0))
    settings.setdefault("guide", _program_name(g0))
    parts = [
        *_header(title, len(chains), batch[0].shape[0], diagnostics),
        "<h2>Run settings and estimator plan</h2>",
        _table(settings_table(settings, history, diagnostics, batch[0].shape[0])),
        *_training(history, diagnostics.convergence, settings), *_evaluation(evaluation),
        *_khat(summary, diagnostics.pointwise, worst_rows), *_latent_usage(summary, diagnostics),
        *_reconstructions(diagnostics.tree, diagnostics.prior_means, image_shape),
        *_latent_space(diagnostics, labels),
        *posterior_section(diagnostics, _worst_points(worst_rows)),
        *_gaps(diagnostics.gaps), *sbc_section(diagnostics),
    ]
    return ReportPath(_write_page(out, title, parts))


def _program_name(program) -> str:
    """A program's name for the settings table: a function's name, a module's class name."""
    name = getattr(program, "__name__", None)
    return str(name) if name else type(program).__name__


def _worst_points(worst_rows) -> list:
    first = worst_rows[worst_rows["chain"] == worst_rows["chain"].iloc[0]]
    return first["point"].tolist()


def _header(title, num_runs: int, num_points: int, diagnostics) -> list[str]:
    status, verdict = _overall(diagnostics.checks)
    return [
        f"<h1>{html.escape(title or 'ppl-vae posterior diagnostics')}</h1>",
        f"<p class='sub'>{num_runs} run(s), {num_points} data points, "
        f"{diagnostics.tree.attrs.get('num_draws')} guide draws per point; written "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}</p>",
        f"<div class='verdict' style='background:{_STATUS_COLOR[status]}'>{status.upper()}: "
        f"{html.escape(verdict)}</div>", _next_steps(diagnostics.checks),
        "<h2>Verdicts</h2>", _checks_html(diagnostics.checks),
    ]


def _training(history, conv, settings) -> list[str]:
    kept = settings.get("kept_epoch")
    curves = figs.elbo_curves(history, kept_epoch=kept)
    marks = "; dashed: the kept epoch (its parameters are the result)" if kept else ""
    if history is not None and "lr" in history and history["lr"].nunique() > 1:
        marks += "; dotted: learning-rate drops"
    parts = ["<h2>Training</h2>",
             _img(curves, f"ELBO per epoch (nats per data point){marks}") if curves else
             "<p>No training history was given.</p>"]
    if conv is not None:
        series = "validation" if conv.column == "val_elbo" else "training"
        parts.append(f"<p>Over the last {conv.window} of {conv.epochs} epochs the {series} "
                     f"ELBO moved {conv.slope:+.4f} &plusmn; {conv.slope_se:.4f} nats per point "
                     f"per epoch, {conv.gain_last_10pct:+.3f} over the last 10% of the epochs"
                     f"{html.escape(conv.lr_note)}: "
                     f"{'still improving' if conv.still_improving else 'converged'}.</p>")
    return parts


_EVALUATION = {
    "elbo": "ELBO, E_q[log p(x, z) - log q(z | x)] per data point",
    "iwae": "importance-weighted bound on log p(x) with num_samples draws (tighter than elbo)",
    "kl": "KL(q(z | x) || p(z)) per data point: what the code costs",
    "recon": "E_q[log p(x | z)]: the reconstruction term (elbo = recon - kl)",
    "num_samples": "guide draws per point for iwae",
}


def _evaluation(evaluation) -> list[str]:
    names = list(evaluation)
    ev = pd.DataFrame({"quantity": names, "value": [float(v) for v in evaluation.values()],
                       "meaning": [_EVALUATION.get(n, "") for n in names]})
    return ["<h2>Evaluation</h2>", _table(ev), "<p>In nats per data point.</p>"]


def _khat(summary, pointwise, worst_rows) -> list[str]:
    low = summary["khat_threshold"]
    return ["<h2>Pareto k-hat per data point</h2>",
            f"<p>{summary['share_khat_gt_threshold']:.1%} of points above {low:.2f}, "
            f"{summary['share_khat_gt_0.7']:.1%} above 0.7 (Vehtari et al. 2024: with S draws "
            f"importance sampling is reliable below min(1 - 1/log10 S, 0.7) = {low:.2f}; "
            "above 0.7 the guide misses posterior mass there).</p>",
            _img(figs.khat_figure(pointwise, low),
                 f"k-hat per data point; dashed: {low:.2f} and 0.7"),
            "<p>The data points with the largest k-hat:</p>", _table(worst_rows),
            legend(worst_rows.columns)]


def _latent_usage(summary, diagnostics) -> list[str]:
    return ["<h2>Latent usage</h2>",
            f"<p>{summary['active_units']} of {summary['num_dims']} dimensions active; total "
            f"KL {summary['kl_total']:.3f} nats; mutual information I(x; z) "
            f"{summary['mutual_information']:.3f} nats (ceiling log N = "
            f"{np.log(max(diagnostics.num_points, 2)):.2f}).</p>",
            _img(figs.kl_figure(diagnostics.latent), "KL(q(z_d | x) || p(z_d)) per dimension")]


def _reconstructions(tree, prior, image_shape) -> list[str]:
    grid = _images(tree, prior, image_shape)
    if grid is None:
        return []
    return ["<h2>Data, reconstructions and prior samples</h2>",
            _img(grid, "rows: data, E[x | z] at the guide's draws, E[x | z] with z from the "
                 "prior")]


def _latent_space(diagnostics, labels) -> list[str]:
    means, labels = _latent_means(diagnostics, labels)
    if means is None:
        return []
    if labels is not None and len(labels) == means.shape[0]:
        png, caption = figs.latent_map(means, np.asarray(labels)), "guide means coloured by label"
    else:
        png, caption = figs.latent_map(means), "guide means"
    return ["<h2>Latent space</h2>", _img(png, caption)] if png is not None else []


_GAPS = {
    "elbo_amortized": "ELBO with the encoder's q(z | x)",
    "elbo_refined": "ELBO after optimising q for each point on its own",
    "log_px": "importance-weighted log p(x)",
    "amortization_gap": "elbo_refined - elbo_amortized: what the encoder leaves",
    "approximation_gap": "log_px - elbo_refined: what the guide's family cannot represent",
    "inference_gap": "log_px - elbo_amortized: the sum of both",
    "refine_steps": "optimisation steps of the per-point refinement",
}


def _gaps(gaps) -> list[str]:
    if gaps is None:
        return []
    g = gaps.mean().to_frame("mean (nats)").reset_index(names="quantity")
    g["meaning"] = [_GAPS.get(q, "") for q in g["quantity"]]
    return ["<h2>Inference gaps (Cremer et al. 2018)</h2>",
            "<p>Per-point refinement of q from the encoder's output: the amortization gap "
            "is what a per-point optimiser gains over the encoder; the approximation gap "
            "is what the guide's family cannot represent.</p>",
            _table(g), _img(figs.gap_figure(gaps), "gaps per refined point")]


def _write_page(out, title, parts: list[str]) -> Path:
    body = "\n".join(p for p in parts if p)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title or 'ppl-vae report')}</title><style>{_CSS}</style>"
            f"</head><body>{body}</body></html>")
    # Atomically, never through a symbolic link; recorded when ``out`` lies in a run folder.
    return write_bytes(Path(out), page.encode("utf-8"))


