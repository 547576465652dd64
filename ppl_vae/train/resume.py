"""Resuming a run from its checkpoint: only the same run, or the same run with more epochs.

A checkpoint records the settings, a fingerprint of the data (shape and the sha256 of every
value, :func:`ppl_vae.train.prepare.fingerprint`) and digests of the programs' source
(:mod:`ppl_vae.programs.digest`). A resumed run that would differ in anything that changes the
result (estimator, learning rate, seed, batch size, data, program code, ...) is refused with
every difference listed: training on top of another run's history would give a result that is
neither run's. A longer budget (more epochs) is allowed and recorded in
``settings["epochs_extended"]``. The device may change (a run moved to another machine).
"""

from __future__ import annotations

from dataclasses import replace

from ppl_vae.programs.digest import programs_differences
from ppl_vae.train.callbacks import Checkpointer, EarlyStopping
from ppl_vae.train.checkpoint import load_checkpoint, restore_params, restore_rng
from ppl_vae.train.state import TrainState

__all__ = ["RESUME_KEYS", "settings_differences", "fingerprint_differences", "resume"]

# The settings a resumed run must share with its checkpoint.
RESUME_KEYS = (
    "estimator", "num_particles", "vectorize_particles", "jit", "batch_size", "lr", "optimizer",
    "dtype", "seed", "data_plate", "num_data", "num_validation", "early_stopping_patience",
    "elbo_options", "world_size",
)


def fingerprint_differences(old: dict, new: dict, *, values: bool = True) -> list[str]:
    """Each way the data fingerprint ``new`` differs from ``old`` (see
    :func:`ppl_vae.train.prepare.fingerprint`), one line each. ``values=False``: shapes only
    (the data in another dtype hashes otherwise, and the dtype is said already)."""
    out = []
    for part in ("data", "validation"):
        was, now = old.get(part), new.get(part)
        if was == now:
            continue
        if was is None or now is None:
            out.append(f"{part}: {'none' if was is None else 'given'} in the checkpoint, "
                       f"{'none' if now is None else 'given'} now")
            continue
        if len(was) != len(now):
            out.append(f"{part}: {len(was)} member(s) in the checkpoint, {len(now)} now")
            continue
        for i, (a, b) in enumerate(zip(was, now, strict=True)):
            label = part if len(now) == 1 else f"{part}[{i}]"
            if a["shape"] != b["shape"]:
                out.append(f"{label}: shape {tuple(a['shape'])} in the checkpoint, "
                           f"{tuple(b['shape'])} now")
            elif not values:
                continue
            elif "rows" not in a and a["sha256"] != b.get("sample_sha256"):
                # Recorded by an earlier version: the sha256 of a fixed sample of rows.
                out.append(f"{label}: other values (the sha256 of a fixed sample of rows differs)")
            elif "rows" in a and a["sha256"] != b["sha256"]:
                out.append(f"{label}: other values (the sha256 of its values differs)")
    return out


def settings_differences(old: dict, new: dict) -> list[str]:
    """Each way the ``new`` run differs from the checkpoint's (``old``), one line each; a longer
    budget is not a difference. Keys an older checkpoint does not record are not compared."""
    out = []
    with_fingerprint = "fingerprint" in old
    for key in RESUME_KEYS:
        if key not in old or (with_fingerprint and key in ("num_data", "num_validation")):
            continue  # the fingerprint's shapes say it, once
        if old[key] != new[key]:
            out.append(f"{key}: {old[key]!r} in the checkpoint, {new[key]!r} now")
    if int(new["epochs"]) < int(old.get("epochs", 0)):
        out.append(f"epochs: {old['epochs']} in the checkpoint, {new['epochs']} now (a resumed "
                   "run may only get more epochs)")
    if with_fingerprint:
        out += fingerprint_differences(old["fingerprint"], new["fingerprint"],
                                       values=old.get("dtype") == new.get("dtype"))
    if "programs" in old:  # the same parameter names and shapes may belong to other code
        out += programs_differences(old["programs"], new.get("programs", {}))
    return out


def resume(checkpointer: Checkpointer, settings: dict, model, guide, state: TrainState,
           early_stopping: EarlyStopping | None,
           device) -> tuple[list, int, dict, TrainState] | None:
    """Load ``checkpointer``'s checkpoint into the programs, the optimizer, the RNG and the early
    stopping state. Returns (history rows, first epoch to run, settings, ``state`` at the
    checkpoint's step), or None when there is no checkpoint yet. Raises ``ValueError`` listing every difference from the checkpoint's run."""
    if not checkpointer.path.exists():
        return None
    ckpt = load_checkpoint(checkpointer.path, map_location=device)
    old = ckpt.get("settings", {})
    differences = settings_differences(old, settings)
    if differences:
        raise ValueError(
            f"cannot resume from {checkpointer.path}: this run differs from the checkpoint's in "
            f"{'; '.join(differences)}. Resume with the checkpoint's settings and data, or start "
            "a new run in another checkpoint_dir"
        )
    extended = list(old.get("epochs_extended", []))
    if int(settings["epochs"]) > int(old.get("epochs", settings["epochs"])):
        extended.append({"after_epoch": int(ckpt["epoch"]), "from": int(old["epochs"]),
                         "to": int(settings["epochs"])})
    settings = {**settings, "epochs_extended": extended} if extended else settings
    restore_params(ckpt["params"], model, guide)
    state.optimizer.load_state_dict(ckpt["optimizer"])
    restore_rng(ckpt["rng"])
    if early_stopping is not None and ckpt.get("early_stopping") is not None:
        early_stopping.load_state_dict(ckpt["early_stopping"])
    checkpointer.saved_epoch = int(ckpt["epoch"])
    return (list(ckpt["history"]), int(ckpt["epoch"]) + 1, settings,
            replace(state, step=int(ckpt["step"])))

