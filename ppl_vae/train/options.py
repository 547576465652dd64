"""``fit``'s options, declared once: grouped by concern in frozen dataclasses.

Each field is declared with :func:`option`: its default, a one-line doc, its check (the one
that raises ``TypeError`` / ``ValueError`` naming the argument), its allowed values and its
command-line flag. From these declarations come the argument checks (a group checks itself when
built), ``fit``'s recorded settings (:func:`recorded_settings`), the CLI's training flags
(:mod:`ppl_vae.train.flags`), the old keywords that keep working for one release and the
options table of ``docs/options.md`` (:mod:`ppl_vae.train.keywords`).

Adding an option: one field in one group here (and where the loop reads it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace

import torch

from ppl_vae.data.tensors import resolve_device
from ppl_vae.estimators.pyro_elbos import estimator_label, resolve_estimator
from ppl_vae.estimators.registry import check_jit
from ppl_vae.train.arguments import (
    MAX_SEED,
    _as_name,
    _check_dtype,
    _check_elbo_options,
    as_flag,
    as_integer,
    as_rate,
    check_callbacks,
    check_checkpoint_dir,
    check_devices,
    check_estimator,
    check_optimizer,
)
from ppl_vae.train.loggers import check_loggers
from ppl_vae.train.objective import TERMS, ObjectiveTerm
from ppl_vae.train.optimizers import optimizer_label, recorded_lr
from ppl_vae.train.threads import check_threads

__all__ = ["Checkpoint", "Compute", "FitConfig", "GROUPS", "Loop", "Objective", "Parallel",
           "option", "recorded_settings"]

# What `patience` is when not given: epochs="auto" needs one, and the plateau schedule uses
# max(2, patience // 4).
DEFAULT_PATIENCE = 20


def option(default, doc: str, *, check: Callable, flag: str | tuple[str, ...] | None = None,
           choices: Sequence | None = None, legacy: str | None = None, cli: Callable | None = None,
           record: Callable | bool = True):
    """Declare one option.

    Parameters
    ----------
    default : the value when not given.
    doc : one line, for the docs table and the CLI's help.
    check : ``check(name, value) -> value``, raising ``TypeError`` / ``ValueError`` naming it.
    flag : the CLI spelling(s) (the first is the one shown); None: no flag.
    choices : the allowed values, when a short list.
    legacy : the keyword ``fit`` took it as before the groups (default: the field's name).
    cli : ``text -> value`` for the flag (default: from the type of ``default``), or a dict of
        argparse keywords (``type``, ``metavar``, the CLI's own ``default``, ``convert``: the
        parsed text -> the value ``fit`` takes, ``check``: the CLI's own check).
    record : whether ``settings`` records it, or ``record(value, config) -> dict`` of entries.
    """
    meta = {"doc": doc, "check": check, "flag": (flag,) if isinstance(flag, str) else flag,
            "choices": choices, "legacy": legacy, "cli": cli, "record": record}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _check_declared(instance) -> None:
    """Run every field's declared check, keeping the checked (converted) value."""
    for f in fields(instance):
        name = f.metadata.get("legacy") or f.name
        object.__setattr__(instance, f.name, f.metadata["check"](name, getattr(instance, f.name)))


@dataclass(frozen=True)
class Check:
    """A declared check with what it expects in words (the CLI's usage errors say it:
    ``expected a whole number >= 1, got '1.5'``)."""

    fn: Callable
    expected: str

    def __call__(self, name, value):
        return self.fn(name, value)


def _count(minimum=1, maximum=None, optional=False) -> Check:
    def check(name, value):
        if value is None and optional:
            return None
        return as_integer(name, value, minimum=minimum, maximum=maximum)
    return Check(check, f"a whole number >= {minimum}" if maximum is None else
                 f"a whole number in [{minimum}, {maximum}]")


def _rate(optional=False) -> Check:
    def check(name, value):
        return None if value is None and optional else as_rate(name, value)
    return Check(check, "a finite number > 0")


def _tolerance(name, value):
    return 0.0 if value == 0 and not isinstance(value, bool) else as_rate(name, value)


def _one_of(*allowed):
    def check(name, value):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        return value
    return check


def _name(optional=False):
    return lambda name, value: _as_name(name, value, optional=optional)


def _check_epochs(name, value):
    if isinstance(value, str):
        if value != "auto":
            raise TypeError(f"epochs must be an integer or 'auto', got {value!r} (str)")
        return value
    return as_integer(name, value)


_epochs = Check(_check_epochs, "a whole number >= 1")


def _terms(name, value) -> tuple:
    if isinstance(value, ObjectiveTerm):
        value = (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of objective terms (KLWarmup, FreeBits, ...), "
                        f"got {type(value).__name__}")
    for i, term in enumerate(value):
        if not isinstance(term, ObjectiveTerm):
            raise TypeError(f"{name}[{i}] is not an objective term (programs, columns, settings, "
                            f"recordable, warmup_epochs; see ppl_vae.train.objective): {term!r}")
    return tuple(value)


def _auto_only(key):
    return lambda value, config: {key: value if config.auto else None}


@dataclass(frozen=True)
class Objective:
    """What training optimizes: the estimator's particles and options, the data plate, and the
    training-only terms (:mod:`ppl_vae.train.objective`)."""

    num_particles: int = option(1, "latent draws per data point and step (the bound's K for "
                                "iwae, vimco, dreg)", check=_count(), flag="--num-particles")
    vectorize_particles: bool = option(False, "draw the particles in one vectorized pass "
                                       "instead of a loop", check=as_flag,
                                       flag="--vectorize-particles")
    elbo_options: dict = option({}, "extra keyword arguments of the ELBO (e.g. "
                                "max_plate_nesting)", check=lambda n, v: _check_elbo_options(v),
                                record=lambda v, c: {"elbo_options": {
                                    k: repr(x) for k, x in sorted(v.items())}})
    data_plate: str | None = option(None, "the plate over data points, scaled by N / batch "
                                    "size (default: the one plate of the batch's size)",
                                    check=_name(optional=True))
    terms: tuple = option((), "training-only terms: KLWarmup(epochs), FreeBits(nats, per), or "
                          "your own (see ppl_vae.train.objective)", check=_terms, record=False)

    def __post_init__(self):
        _check_declared(self)


@dataclass(frozen=True)
class Loop:
    """How long training runs: convergence (``epochs="auto"``), early stopping, limits and the
    learning-rate schedule."""

    patience: int | None = option(
        None, "epochs without a better monitored ELBO before stopping (epochs='auto': default "
        f"{DEFAULT_PATIENCE}; integer epochs: early stopping on the validation ELBO; none: "
        "no early stopping)", check=_count(optional=True), flag=("--patience", "--early-stopping"),
        cli={"type": int, "metavar": "PATIENCE"},
        record=lambda v, c: {"patience": c.patience if c.auto else None,
                             "early_stopping_patience": None if c.auto else v})
    max_epochs: int = option(500, "epochs='auto': at most this many epochs", check=_count(),
                             flag="--max-epochs", record=False)
    time_budget: float | None = option(None, "stop training after this many seconds (none: no "
                                       "time limit)", check=_rate(optional=True),
                                       flag="--time-budget",
                                       cli={"type": float, "metavar": "SECONDS"})
    tolerance: float = option(0.01, "epochs='auto': an improvement counts above this (nats per "
                              "point)", check=_tolerance, flag="--tolerance",
                              record=_auto_only("tolerance"))
    lr_schedule: str | None = option(None, "plateau: halve the learning rate when the monitored "
                                     "ELBO stops improving for max(2, patience // 4) epochs",
                                     check=_one_of(None, "plateau"), flag="--lr-schedule",
                                     choices=("plateau",))

    def __post_init__(self):
        _check_declared(self)


@dataclass(frozen=True)
class Checkpoint:
    """Where a run writes its checkpoint and run folder, and whether it continues one."""

    dir: str | None = option(None, "write checkpoint.pt, history.csv and the run folder there "
                             "after every epoch", check=lambda n, v: check_checkpoint_dir(v),
                             legacy="checkpoint_dir", record=False)
    resume: bool = option(False, "continue from the folder's checkpoint (the same run)",
                          check=as_flag, flag="--resume", record=False)

    def __post_init__(self):
        _check_declared(self)
        if self.resume and self.dir is None:
            raise ValueError("resume=True needs checkpoint_dir")


@dataclass(frozen=True)
class Parallel:
    """Data-parallel training (Lightning Fabric, DDP; see ``docs/scaling.md``)."""

    devices: int | str | tuple | None = option(
        None, "data-parallel processes per node: a count, a list of indices or 'auto' (none: "
        "one process)", check=lambda n, v: check_devices(v, None, 1)[0], flag="--devices",
        choices=None,
        cli=lambda text: text if text == "auto" else int(text),
        record=lambda v, c: {"devices": list(v) if isinstance(v, tuple) else v})
    strategy: str | None = option(None, "Fabric strategy: ddp, ddp_spawn, ddp_fork (default "
                                  "ddp when devices are given)", check=_name(optional=True),
                                  flag="--strategy", cli=str)
    num_nodes: int = option(1, "machines (torchrun / SLURM)", check=_count(), flag="--num-nodes")

    def __post_init__(self):
        _check_declared(self)


@dataclass(frozen=True)
class Compute:
    """How the steps run: the floating dtype, CPU threads, recording and compiling."""

    dtype: torch.dtype | None = option(None, "floating dtype of data and parameters (none: "
                                       "the data's)", check=lambda n, v: _check_dtype(v),
                                       flag="--dtype", choices=("float32", "float64"),
                                       cli={"default": "float32",
                                            "convert": lambda text: getattr(torch, text)},
                                       record=False)
    threads: int | str | None = option(
        "auto", "intra-op CPU threads while training: auto (what the model's size can use, at "
        "most the idle cores), a number, or none (torch's setting)",
        check=lambda n, v: check_threads(v), flag="--threads",
        cli=lambda text: text if text == "auto" else int(text), record=False)
    jit: bool | str = option("auto", "auto: record the step where the programs are static, "
                             "compile it in a background process and switch once it agrees "
                             "(PPL_VAE_BACKGROUND_COMPILE=0: never compile); true: record or "
                             "fail; compile: compile at once; false: eager",
                             check=lambda n, v: check_jit(v), flag="--jit",
                             choices=("auto", "true", "false", "compile"),
                             cli={"nargs": "?", "const": "true"})

    def __post_init__(self):
        _check_declared(self)


def _group(cls):
    def check(name, value):
        if value is None:
            return cls()
        if cls is Checkpoint and not isinstance(value, Checkpoint):
            return Checkpoint(dir=value)  # checkpoint="runs/x": the folder alone
        if not isinstance(value, cls):
            raise TypeError(f"{name} must be a ppl_vae.{cls.__name__}(...), got "
                            f"{type(value).__name__}")
        return value
    return field(default_factory=cls, metadata={"doc": cls.__doc__.splitlines()[0],
                                                "check": check, "group": cls})


@dataclass(frozen=True)
class FitConfig:
    """The checked options of one ``fit`` call (everything but the programs and the data): the
    common ones flat, the rest in their groups. The distributed workers receive it unchanged."""

    estimator: str = option("analytic", "ELBO estimator (see `ppl-vae estimators`), or a "
                            "pyro.infer ELBO instance", check=lambda n, v: check_estimator(v),
                            flag="--estimator",
                            record=lambda v, c: {"estimator": estimator_label(v)})
    epochs: int | str = option(30, "an integer, or 'auto': until the monitored ELBO stops "
                               "improving (at most max_epochs)", check=_epochs, flag="--epochs",
                               cli=lambda text: text if text == "auto" else int(text),
                               record=lambda v, c: {"epochs": c.max_epochs,
                                                    "epochs_mode": "auto" if c.auto else "fixed",
                                                    "max_epochs": c.max_epochs if c.auto else None})
    batch_size: int = option(128, "rows per training step (at most the training rows)",
                             check=_count(minimum=None), flag="--batch-size",
                             cli={"type": int, "check": _count()})
    lr: float = option(1e-3, "the optimizer's learning rate (a pyro.optim optimizer's own lr "
                       "wins)", check=_rate(), flag="--lr",
                       record=lambda v, c: {"lr": recorded_lr(c.optimizer, v)})
    optimizer: str | Callable = option(
        "adam", "adam, adamw, sgd, rmsprop, adagrad, a torch.optim.Optimizer class, a factory "
        "or a pyro.optim optimizer (Adam, ClippedAdam, per-parameter options)",
        check=lambda n, v: check_optimizer(v), flag="--optimizer",
        record=lambda v, c: {"optimizer": c.optimizer_name})
    seed: int = option(0, "seeds Pyro, torch, NumPy and the batch order (same seed, same run)",
                       check=_count(0, MAX_SEED), flag="--seed")
    device: torch.device | None = option(None, "cpu, cuda, cuda:1, mps ... (none: the data's)",
                                         check=lambda n, v: resolve_device(v), flag="--device",
                                         cli=str, record=False)
    progress: bool | None = option(None, "a progress bar and a summary line (none: on a terminal "
                                   "or in a notebook)", check=lambda n, v: None if v is None
                                   else as_flag(n, v), flag="--no-progress",
                                   cli={"help": "no progress bar"}, record=False)
    callbacks: tuple = option((), "callback(record, state) after each epoch; True stops",
                              check=lambda n, v: check_callbacks(v), record=False)
    loggers: tuple = option((), "Lightning Fabric loggers (CSV, TensorBoard, MLflow, W&B)",
                            check=lambda n, v: check_loggers(v), record=False)
    objective: Objective = _group(Objective)
    loop: Loop = _group(Loop)
    checkpoint: Checkpoint = _group(Checkpoint)
    parallel: Parallel = _group(Parallel)
    compute: Compute = _group(Compute)
    # Not an option: estimator= a Pyro ELBO instance as the user wrote it (set when resolved,
    # kept by ``replace``), recorded in the settings.
    pyro_elbo: str | None = field(default=None, metadata={
        "doc": "estimator= a Pyro ELBO instance, as written (set by fit, not an option)",
        "check": lambda n, v: v, "flag": None, "choices": None, "legacy": None, "cli": None,
        "internal": True,
        "record": lambda v, c: {"pyro_elbo": v} if v is not None else {}})

    def __post_init__(self):
        _check_declared(self)
        self._resolve_estimator()
        jit = self.compute.jit
        eager = [t for t in self.objective.terms if not t.recordable]
        if eager and jit is not False and jit != "auto":
            name = next(iter(eager[0].settings()), type(eager[0]).__name__)
            raise ValueError(f"{name} with jit={jit!r}: a recorded step would keep the first "
                             "step's objective; train it with jit=False (or 'auto')")
        if eager and jit is not False:
            object.__setattr__(self, "compute", replace(self.compute, jit=False))

    def _resolve_estimator(self) -> None:
        """estimator= a Pyro ELBO: the matching registered estimator with the instance's
        particles, options and jit (:func:`~ppl_vae.estimators.pyro_elbos.resolve_estimator`),
        written into the groups; a name passes through."""
        obj, set_ = self.objective, object.__setattr__
        chosen = resolve_estimator(self.estimator, num_particles=obj.num_particles,
                                   vectorize_particles=obj.vectorize_particles,
                                   jit=self.compute.jit, elbo_options=obj.elbo_options)
        set_(self, "estimator", chosen.estimator)
        set_(self, "objective", replace(obj, num_particles=chosen.num_particles,
                                        vectorize_particles=chosen.vectorize_particles,
                                        elbo_options=chosen.elbo_options))
        set_(self, "compute", replace(self.compute, jit=chosen.jit))
        set_(self, "pyro_elbo", chosen.pyro_elbo or self.pyro_elbo)

    @property
    def auto(self) -> bool:
        """``epochs="auto"``: train until the monitored ELBO stops improving."""
        return self.epochs == "auto"

    @property
    def max_epochs(self) -> int:
        """The budget: ``loop.max_epochs`` for ``epochs="auto"``, else ``epochs``."""
        return self.loop.max_epochs if self.auto else self.epochs

    @property
    def patience(self) -> int:
        """``loop.patience``, or :data:`DEFAULT_PATIENCE` when not given."""
        return DEFAULT_PATIENCE if self.loop.patience is None else self.loop.patience

    @property
    def optimizer_name(self) -> str:
        return optimizer_label(self.optimizer)

    @property
    def warmup_epochs(self) -> int:
        """Epochs early stopping waits out: the longest warm-up of the objective's terms."""
        return max((t.warmup_epochs for t in self.objective.terms), default=0)


GROUPS = {f.name: f.metadata["group"] for f in fields(FitConfig) if "group" in f.metadata}


def recorded_settings(config: FitConfig) -> dict:
    """The settings a run records, from the declarations (JSON values; compared by a resume):
    every recorded option under its (old) keyword name, then each term's settings."""
    out: dict = {}
    for owner in (config, *(getattr(config, g) for g in GROUPS)):
        for f in fields(owner):
            record = f.metadata.get("record", False)
            if record is False or "group" in f.metadata:
                continue
            value = getattr(owner, f.name)
            name = f.metadata.get("legacy") or f.name
            out.update(record(value, config) if callable(record) else {name: value})
    for term in TERMS:  # the built-in terms' keys, also when not used (None)
        out.update({f.metadata["flag"].lstrip("-").replace("-", "_"): None for f in fields(term)})
    for term in config.objective.terms:
        out.update(term.settings())
    return out
