"""``ppl_vae.load``: a run folder back as a :class:`~ppl_vae.train.result.FitResult`."""

from __future__ import annotations

from pathlib import Path

from ppl_vae.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ppl_vae.train.result import FitResult
from ppl_vae.train.run_dir import load_run

__all__ = ["load"]

RECORD_KEYS = ("model", "guide", "model_sha256", "guide_sha256", "model_options",
               "guide_options", "use_labels")


def load(path, *, model=None, guide=None, data=None, validation_data=None) -> FitResult:
    """Read a run folder (written by :meth:`FitResult.save`, ``fit(checkpoint_dir=...)`` or the
    CLI) back, with its trained parameters in the programs.

    Parameters
    ----------
    path : str or Path
        The run folder. Every file read is checked against its sha256 manifest.
    model, guide : program, class, ``file.py:name`` or None
        The programs to load the parameters into: the objects themselves (for example freshly
        built ``VAE(...)`` / ``AutoNormal(model)``), a class (built with ``from_dataset``), or
        ``file.py:name`` (checked against the recorded sha256). None: the zoo program the folder
        names. A folder saved from Python needs both passed again (``ValueError`` otherwise).
        Programs whose parameters' names or shapes differ from the recorded ones are refused,
        naming each difference.
    data, validation_data : optional
        Only for a folder that records no data (``fit(checkpoint_dir=...)`` keeps none): what
        ``fit`` was given; checked against the recorded fingerprint. The programs run once on
        it, which creates lazily made parameters (autoguides) before their values load.

    Returns
    -------
    FitResult
        ``model``, ``guide`` with the trained parameters (Pyro's param store is cleared and
        refilled), ``history``, ``params``, ``settings``; ``state`` is None (continue training
        with ``fit(..., checkpoint_dir=path, resume=True)``).
    """
    run = load_run(Path(path), model=model, guide=guide, data=data,
                   validation_data=validation_data)
    # The folder's own parameter record, under the names it was trained with (the zoo's
    # module names carry a per-process counter: this process may have built others first).
    final = run.path / "final.pt"
    params = load_checkpoint(final if final.exists() else run.path / CHECKPOINT_NAME,
                             map_location="cpu")["params"]
    settings = dict(run.config.get("settings", {}))
    record = {k: run.config[k] for k in RECORD_KEYS if k in run.config}
    return FitResult(model=run.model, guide=run.guide, history=run.history, params=params,
                     settings=settings, state=None,
                     stopped_early=settings.get("stopped_by") == "patience", record=record)
