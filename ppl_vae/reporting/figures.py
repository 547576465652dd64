"""Figures of the HTML report, each returned as PNG bytes (matplotlib, Agg backend)."""

from __future__ import annotations

import io

import numpy as np

from ppl_vae.diagnostics.calibration import MAX_ECDF_RANKS, pit_values
from ppl_vae.diagnostics.psis import KHAT_THRESHOLDS

__all__ = [
    "elbo_curves", "forest_figure", "gap_figure", "globals_figure", "image_grid", "kl_figure",
    "khat_figure", "ecdf_figure", "latent_map", "sbc_figure",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def elbo_curves(history, kept_epoch=None) -> bytes | None:
    """Training and validation ELBO (nats per data point) per epoch; a dashed line at the kept
    epoch and dotted lines where the learning rate dropped (history's ``lr`` column)."""
    if history is None or len(history) == 0 or "train_elbo" not in history:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(history["epoch"], history["train_elbo"], marker="o", ms=3, label="train ELBO")
    if "val_elbo" in history and history["val_elbo"].notna().any():
        ax.plot(history["epoch"], history["val_elbo"], marker="o", ms=3, label="validation ELBO")
    if "lr" in history:
        lr = history["lr"].to_numpy(dtype=float)
        drops = history["epoch"].to_numpy()[1:][np.diff(lr) < 0]
        for i, epoch in enumerate(drops):
            ax.axvline(epoch - 0.5, color="gray", ls=":", lw=1,
                       label="learning-rate drop" if i == 0 else None)
    if kept_epoch is not None:
        ax.axvline(kept_epoch, color="k", ls="--", lw=1.2, label=f"kept epoch {kept_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per data point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def khat_figure(pointwise, threshold: float = KHAT_THRESHOLDS[0]) -> bytes:
    """k-hat of every data point with the ``threshold`` (of the number of draws) / 0.7 lines,
    and its histogram."""

    plt = _plt()
    k = pointwise["k_hat"].to_numpy()
    finite = np.isfinite(k)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [2, 1]})
    colors = np.where(k > KHAT_THRESHOLDS[1], "tab:red",
                      np.where(k > threshold, "tab:orange", "tab:blue"))
    a1.scatter(np.arange(len(k))[finite], k[finite], s=6, c=colors[finite])
    for t, c in zip((threshold, KHAT_THRESHOLDS[1]), ("tab:orange", "tab:red"), strict=True):
        a1.axhline(t, color=c, ls="--", lw=1)
        a2.axvline(t, color=c, ls="--", lw=1)
    a1.set_xlabel("data point (and chain)")
    a1.set_ylabel("Pareto k-hat")
    if finite.any():
        a2.hist(k[finite], bins=30, color="tab:blue", alpha=0.8)
    if (~finite).any():
        a1.set_title(f"{int((~finite).sum())} points with constant weights (exact fit) not shown",
                     fontsize=9)
    a2.set_xlabel("k-hat")
    a2.set_ylabel("data points")
    return _png(fig)


def kl_figure(latent) -> bytes | None:
    """KL(q || prior) per latent dimension, inactive units hatched."""
    if latent is None or len(latent) == 0:
        return None
    plt = _plt()
    sites = latent["site"].unique()
    # One site: its dimension numbers (short, horizontal); several: site[dim].
    labels = [str(d) if len(sites) == 1 else f"{s}[{d}]"
              for s, d in zip(latent["site"], latent["dim"], strict=True)]
    n = len(labels)
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.35 * n + 2)), 3.4))
    colors = ["tab:blue" if a else "lightgray" for a in latent["active"]]
    ax.bar(range(n), latent["kl"], color=colors, edgecolor="k", lw=0.3)
    step = max(1, int(np.ceil(n / 40)))  # at most 40 labels, each readable
    ticks = list(range(0, n, step))
    long = len(sites) > 1 or max(len(label) for label in labels) > 3
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90 if long else 0, fontsize=10)
    ax.set_xlabel(f"dimension of {sites[0]}" if len(sites) == 1 else "latent dimension")
    ax.set_ylabel("KL (nats, mean over data)")
    ax.set_title("KL per dimension (gray: inactive unit)", fontsize=10)
    return _png(fig)


def image_grid(rows: dict, image_shape) -> bytes | None:
    """Rows of images (name -> array (M, prod(image_shape)))."""
    rows = {k: v for k, v in rows.items() if v is not None and len(v)}
    if not rows or image_shape is None:
        return None
    plt = _plt()
    cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.8, len(rows) * 0.95),
                             squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(np.asarray(images[c]).reshape(image_shape), cmap="gray_r",
                          vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    return _png(fig)


def latent_map(means: np.ndarray, labels=None) -> bytes | None:
    """2-D view (PCA when the latent has more than 2 dimensions) of the guide's means."""
    if means is None or means.ndim != 2 or means.shape[0] < 3:
        return None
    plt = _plt()
    if means.shape[1] > 2:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2).fit_transform(means)
        xlab, ylab = "principal component 1", "principal component 2"
    elif means.shape[1] == 2:
        xy, xlab, ylab = means, "z[0]", "z[1]"
    else:
        xy = np.column_stack([means[:, 0], np.zeros(len(means))])
        xlab, ylab = "z[0]", ""
    fig, ax = plt.subplots(figsize=(5, 4))
    if labels is not None:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(labels), cmap="tab10", s=8)
        fig.colorbar(sc, ax=ax, label="label")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=8)
    ax.set_xlabel(xlab)
    ax.set_ylabel(ylab)
    ax.set_title("guide means E_q[z | x]", fontsize=10)
    return _png(fig)


def sbc_figure(result, names=None, max_dims: int = 12) -> bytes | None:
    """Rank histograms with the uniform band (99%) of the dimensions ``names`` (the report
    passes the failing and farthest-from-uniform ones first), at most ``max_dims``."""
    if result is None:
        return None
    from scipy import stats

    plt = _plt()
    hist = result.histograms()
    names = list(hist.columns if names is None else names)[:max_dims]
    cols = min(6, len(names))
    nrows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(cols * 2.0, nrows * 1.8), squeeze=False)
    table = result.table.set_index(result.table["site"] + "[" + result.table["dim"].astype(str)
                                   + "]")
    for ax, name in zip(axes.ravel(), names, strict=False):
        counts = hist[name].to_numpy()
        n = counts.sum()
        lo, hi = stats.binom.ppf([0.005, 0.995], n, 1 / len(counts))
        ax.axhspan(lo, hi, color="lightgray")
        ok = bool(table.loc[name, "passed"])
        ax.bar(range(len(counts)), counts, color="tab:blue" if ok else "tab:red", width=1.0)
        ax.set_title(f"{name} p={table.loc[name, 'p_value']:.2g}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def gap_figure(gaps) -> bytes | None:
    """Stacked amortization and approximation gaps per refined data point."""
    if gaps is None or len(gaps) == 0:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    idx = np.arange(len(gaps))
    ax.bar(idx, gaps["approximation_gap"], label="approximation gap", color="tab:purple")
    ax.bar(idx, gaps["amortization_gap"], bottom=gaps["approximation_gap"],
           label="amortization gap", color="tab:green")
    ax.set_xlabel("data point")
    ax.set_ylabel("nats")
    ax.legend(fontsize=8)
    return _png(fig)


def globals_figure(tree, selected) -> bytes | None:
    """arviz-plots ``plot_dist`` of the chosen dimensions of the global latents only
    (``selected``: rows of :func:`~ppl_vae.diagnostics.globals.global_table`), one panel each,
    whatever the sites' size: a panel per dimension of a 66,040-dimension site would not end."""
    import arviz_base
    import arviz_plots

    if selected is None or not len(selected):
        return None
    posterior = {}
    for site, index, position in zip(selected["site"], selected["index"], selected["position"],
                                     strict=True):
        draws = tree["posterior"][site].values
        posterior[index] = draws.reshape(draws.shape[0], draws.shape[1], -1)[..., position]
    small = arviz_base.from_dict({"posterior": posterior})
    pc = arviz_plots.plot_dist(small, backend="matplotlib", col_wrap=3)
    fig = pc.viz["chart"].item() if "chart" in pc.viz else _plt().gcf()
    if fig.get_layout_engine() is None:  # room between the rows for the tick labels
        fig.subplots_adjust(hspace=0.6)
    return _png(fig)


def forest_figure(tree, site: str, points, dims=None) -> bytes | None:
    """arviz-plots ``plot_forest`` of a local latent at the given data points, restricted to the
    event dimensions ``dims`` (all when None)."""
    import arviz_plots

    plate = tree.attrs.get("data_plate", "data")
    coords = {plate: list(points)}
    if dims is not None:
        coords[f"{site}_dim_0"] = list(dims)
    pc = arviz_plots.plot_forest(tree, var_names=[site], coords=coords, backend="matplotlib")
    fig = pc.viz["chart"].item() if "chart" in pc.viz else _plt().gcf()
    return _png(fig)


def ecdf_figure(result, calibration=None, max_dims: int = 8, seed: int = 0,
                names=None) -> bytes | None:
    """Δ-ECDF of the SBC ranks (as PIT values) with simultaneous 99% bands (Säilynoja et al.
    2022), drawn by arviz-plots' ``plot_ecdf_pit``; ``names`` (in that order) or the
    ``max_dims`` dimensions farthest from uniform (of those with the most simulations, the
    local ones) are shown."""
    if result is None:
        return None
    import arviz_base
    import arviz_plots


    _plt()
    pit = pit_values(result, seed)
    counts = pit.notna().sum()
    if counts.max() < 2:  # an ECDF of one rank has no band to be drawn in
        return None
    cols = [c for c in pit if counts[c] == counts.max()]
    if names is not None:
        cols = [c for c in names if c in cols]
    elif calibration is not None and "max_deviation" in calibration:
        dev = calibration.set_index("column")["max_deviation"]
        cols = sorted(cols, key=lambda c: -float(dev.get(c, 0.0)))
    cols = cols[:max_dims]
    values = pit[cols].dropna().to_numpy()
    if len(values) > MAX_ECDF_RANKS:  # the bands' cost grows with the square of the ranks
        keep = np.random.default_rng(seed).choice(len(values), MAX_ECDF_RANKS, replace=False)
        values = values[np.sort(keep)]
    values = values.T[:, None, :]  # (dims, chain, draw)
    tree = arviz_base.from_dict(
        {"prior_sbc": {"pit": np.moveaxis(values, 0, -1)}},
        dims={"pit": ["latent"]}, coords={"latent": cols})
    pc = arviz_plots.plot_ecdf_pit(tree, backend="matplotlib", ci_prob=0.99,
                                   col_wrap=4)
    fig = pc.viz["chart"].item() if "chart" in pc.viz else _plt().gcf()
    for ax in fig.axes:  # "pit\nz[3]" in two lines ran into the row above: the name alone
        title = ax.get_title()
        if title:
            ax.set_title(title.split("\n")[-1], fontsize=10)
    if fig.get_layout_engine() is None:  # room between the rows for the tick labels
        fig.subplots_adjust(hspace=0.55)
    return _png(fig)
