"""A run folder: ``config.json`` (how to rebuild the programs and the data), ``history.csv``,
``checkpoint.pt`` (every epoch) and ``final.pt`` (trained parameters).

Everything written here is read back by ``ppl-vae evaluate``, ``diagnose``, ``report`` and
``compare-estimators`` through :func:`load_run`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ppl_vae.data import datasets
from ppl_vae.programs.registry import build
from ppl_vae.train.checkpoint import atomic_write, load_checkpoint, restore_params, save_checkpoint

__all__ = ["Run", "load_data", "save_run", "load_run", "build_programs"]

DATASETS = {
    "digits": datasets.load_digits,
    "binary": datasets.make_binary_images,
    "linear_gaussian": datasets.make_linear_gaussian,
    "regression": datasets.make_regression,
    "eight_schools": datasets.load_eight_schools,
}


def load_data(spec: str) -> datasets.Dataset:
    """A name in ``DATASETS``, ``mnist:DIR`` or a ``.npy``/``.npz``/``.csv``
    file."""
    if spec in DATASETS:
        return DATASETS[spec]()
    if spec.startswith("mnist:"):
        return datasets.load_mnist(spec.split(":", 1)[1])
    if Path(spec).suffix in {".npy", ".npz", ".csv"}:
        return datasets.load_array(spec)
    raise ValueError(
        f"unknown data {spec!r}; choose one of: {', '.join(DATASETS)}, mnist:DIR, or a "
        ".npy/.npz/.csv file"
    )


def build_programs(config: dict, dataset):
    """Model and guide of a run. A synthetic data set's generating latent dimension is the
    default ``latent_dim`` of both (so that, say, ``ppca`` and ``mlp`` agree without flags)."""
    defaults = {"latent_dim": int(dataset.info["latent_dim"])} if "latent_dim" in dataset.info else {}
    model = build("model", config["model"], dataset, defaults=defaults,
                  **config.get("model_options", {}))
    guide = build("guide", config["guide"], dataset, defaults=defaults,
                  **config.get("guide_options", {}))
    return model, guide


def fit_data(config: dict, dataset, split: str = "train"):
    """The ``data`` argument ``fit`` gets for this run: features, plus labels when the model
    is conditional (``config["use_labels"]``), plus real-valued targets when the data set has
    them (``Dataset.train_targets``: regression-type data, programs called as ``(x, y)``)."""
    x = dataset.train if split == "train" else dataset.test
    parts = [x]
    if config.get("use_labels"):
        if dataset.train_labels is None:
            raise ValueError(f"use_labels (--with-labels) was given but data {dataset.name!r} "
                             "has no labels")
        parts.append(dataset.train_labels if split == "train" else dataset.test_labels)
    if dataset.train_targets is not None:
        parts.append(dataset.train_targets if split == "train" else dataset.test_targets)
    return parts[0] if len(parts) == 1 else tuple(parts)


def save_run(out: Path, config: dict, result) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {**config, "settings": result.settings}
    atomic_write(out / "config.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2, default=str)))
    atomic_write(out / "history.csv", lambda tmp: result.history.to_csv(tmp, index=False))
    save_checkpoint(out / "final.pt", {"params": result.params, "history": result.history.to_dict("records")})


@dataclass
class Run:
    path: Path
    config: dict
    dataset: datasets.Dataset
    model: object
    guide: object
    history: pd.DataFrame

    def data(self, split: str = "test"):
        return fit_data(self.config, self.dataset, split)


def load_run(run_dir) -> Run:
    """Rebuild the programs of a run folder with their trained parameters."""
    path = Path(run_dir)
    if not (path / "config.json").exists():
        raise ValueError(f"{path} is not a ppl-vae run folder (no config.json)")
    config = json.loads((path / "config.json").read_text())
    dataset = load_data(config["data"])
    dtype = getattr(torch, config.get("settings", {}).get("dtype", "float32"))
    dataset = dataset.to(dtype)
    model, guide = build_programs(config, dataset)
    for program in (model, guide):
        if isinstance(program, torch.nn.Module):
            program.to(dtype=dtype)
    final = path / "final.pt"
    if not final.exists():
        final = path / "checkpoint.pt"
    if not final.exists():
        raise ValueError(f"{path} holds no trained parameters (final.pt or checkpoint.pt)")
    ckpt = load_checkpoint(final, map_location="cpu")
    # pyro.param sites are created by running the programs once before their values load.
    from ppl_vae.programs.util import max_plate_nesting

    max_plate_nesting(model, guide, tuple(t[:2] for t in _as_tuple(fit_data(config, dataset))))
    restore_params(ckpt["params"], model, guide)
    history = pd.read_csv(path / "history.csv") if (path / "history.csv").exists() else pd.DataFrame()
    return Run(path, config, dataset, model, guide, history)


def _as_tuple(data):
    return data if isinstance(data, tuple) else (data,)
