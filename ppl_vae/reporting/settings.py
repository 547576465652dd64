"""The report's settings table: what ran (model, guide, data, split, latent size), how training
ended (epochs run, what stopped it, which epoch's parameters were kept, the learning rate at the
end) and the estimator plan."""

from __future__ import annotations

import json

import pandas as pd

from ppl_vae.estimators.registry import ESTIMATORS

__all__ = ["settings_table"]

_STOPPED_BY = {
    "patience": "patience: the monitored ELBO gained no more than the tolerance ({tolerance} "
                "nats per point) for {patience} epochs",
    "max_epochs": "the epoch budget (max_epochs = {max_epochs})",
    "epochs": "the fixed number of epochs ({epochs})",
    "time_budget": "the time budget ({time_budget} s)",
    "callback": "a callback",
}

_TRAINING_KEYS = ("pyro_elbo", "num_particles", "vectorize_particles", "jit", "batch_size", "optimizer",
                  "lr_schedule", "kl_warmup_epochs", "free_bits", "seed", "dtype", "device")


def _latent_size(diagnostics) -> str:
    parts = []
    latent = diagnostics.latent
    if latent is not None and len(latent):
        for site, rows in latent.groupby("site", sort=False):
            parts.append(f"{site}: {len(rows)} (local, per data point)")
    tree = diagnostics.tree
    for site in json.loads(tree.attrs.get("global_sites", "[]")):
        size = 1
        for n in tree["posterior"][site].shape[2:]:
            size *= int(n)
        parts.append(f"{site}: {size:,} (global)")
    return "; ".join(parts) or "no latent sites"


def _ending(settings: dict, history) -> dict:
    if history is None or not len(history):
        return {"training": "no history given (report was not handed a fit's result or "
                            "history)"}
    rows = {}
    run = len(history)
    budget = settings.get("max_epochs") if settings.get("epochs_mode") == "auto" else \
        settings.get("epochs")
    rows["epochs run"] = f"{run}" + (f" of at most {budget}" if budget is not None else "")
    stopped = settings.get("stopped_by")
    if stopped is not None:
        text = _STOPPED_BY.get(stopped, str(stopped))
        rows["stopped by"] = text.format(**{k: settings.get(k) for k in (
            "tolerance", "patience", "max_epochs", "epochs", "time_budget")})
    kept = settings.get("kept_epoch")
    if kept is not None:
        last = int(history["epoch"].iloc[-1])
        rows["kept epoch"] = (f"{kept}: the last one" if kept == last else
                              f"{kept}: the best monitored ELBO; the parameters of the epochs "
                              "after it were discarded")
    if "lr" in history:
        first, last = float(history["lr"].iloc[0]), float(history["lr"].iloc[-1])
        drops = int((history["lr"].diff() < 0).sum())
        rows["learning rate"] = (f"{first:.3g}" if drops == 0 else
                                 f"{first:.3g} at the start, {last:.3g} at the end ({drops} "
                                 "drops by the schedule)")
    elif settings.get("lr") is not None:
        rows["learning rate"] = f"{settings['lr']:.3g}"
    return rows


def settings_table(settings: dict, history, diagnostics, num_points: int) -> pd.DataFrame:
    """Rows ``setting``, ``value``: the run, how it ended, the estimator plan, the options."""
    rows = {key: settings[key] for key in ("model", "guide", "data") if settings.get(key)}
    rows["split"] = settings.get("split") or f"the data given to report ({num_points:,} rows)"
    rows["latent size"] = _latent_size(diagnostics)
    rows.update(_ending(settings, history))
    if settings.get("estimator") is not None:
        name = str(settings["estimator"])
        spec = ESTIMATORS.get(name)
        rows["estimator"] = name
        rows["what it computes"] = spec.summary if spec is not None else "(not a registered name)"
    for key in _TRAINING_KEYS:
        if settings.get(key) is not None:
            rows[key] = settings[key]
    if settings.get("kl_warmup_epochs") or settings.get("free_bits"):
        rows["training objective"] = (
            "changed during training only (KL warm-up / free bits: the history's kl_weight / "
            "free_bits columns mark the epochs whose train_elbo is that objective); the "
            "validation ELBO, the evaluation and every check here use the true ELBO")
    rows.update(_program_rows(diagnostics.tree.attrs))
    return pd.DataFrame({"setting": list(rows), "value": [str(v) for v in rows.values()]})


def _program_rows(attrs) -> dict:
    """How the checks treated the programs: their modules' mode, their own scale."""
    rows = {"modules in evaluation": (
        "eval mode (dropout off, batch norm on running statistics) for the evaluation, the "
        "validation ELBO, every check and the draws; "
        f"{attrs.get('modules_switched_to_eval', 0)} module(s) switched from training mode "
        "and restored afterwards")}
    scales = json.loads(attrs.get("scaled_sites", "{}"))
    if scales:
        rows["program's own scale"] = (
            f"poutine.scale on {sorted(scales)[:4]}: every log density here is Pyro's scaled "
            "term, as in its ELBO; IWAE, k-hat and I(x; z) assume a normalized density "
            "(see the checks)")
    return rows
