"""``fit``'s options declared once (ppl_vae.train.options): the groups check themselves, the old
keywords still work with a FutureWarning naming the new spelling and give the same history, the
CLI's flags and docs/options.md come from the declarations, and a term of one's own composes."""

import inspect
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import pyro
import pytest
import torch
from _diagnostics_cases import simulate

import ppl_vae
from ppl_vae import (
    Checkpoint,
    Compute,
    FreeBits,
    KLWarmup,
    Loop,
    Objective,
    Parallel,
    fit,
)
from ppl_vae.cli.main import build_parser
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE
from ppl_vae.train.flags import fit_options_from_args
from ppl_vae.train.keywords import legacy_keywords, options_table
from ppl_vae.train.objective import TermContext
from ppl_vae.train.options import GROUPS, FitConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "options.md"


def _data(dtype=torch.float32):
    x = torch.sigmoid(simulate(64, seed=0, dtype=dtype))
    return x, torch.sigmoid(simulate(32, seed=1, dtype=dtype))


def _fit(dtype=torch.float32, **kwargs):
    x, v = _data(dtype)
    pyro.set_rng_seed(0)
    model, guide = VAE(3, 2, hidden=8), MLPEncoder(3, 2, hidden=8)
    return fit(model, guide, x, validation_data=v, progress=False, seed=1, batch_size=16,
               **kwargs)


def test_fit_takes_the_programs_the_data_and_a_dozen_or_so_keywords():
    params = inspect.signature(fit).parameters
    keywords = [p for p in params.values() if p.kind is p.KEYWORD_ONLY]
    assert len(keywords) <= 16
    assert {"objective", "loop", "checkpoint", "parallel", "compute"} <= set(params)
    # The flat keywords' defaults are the declared ones.
    declared = {f.name: f.default for f in fields(FitConfig) if "group" not in f.metadata}
    for p in keywords:
        if p.name in declared:
            assert p.default == declared[p.name], p.name


def test_every_option_is_declared_with_a_doc_and_a_check():
    for cls in (FitConfig, *GROUPS.values()):
        for f in fields(cls):
            assert f.metadata["doc"].strip() and callable(f.metadata["check"]), f.name
            assert "\n" not in f.metadata["doc"], f.name


@pytest.mark.parametrize("build, error, fragment", [
    (lambda: Objective(num_particles=0), ValueError, "num_particles must be >= 1"),
    (lambda: Objective(terms=[42]), TypeError, "terms[0] is not an objective term"),
    (lambda: Loop(patience=1.5), TypeError, "patience must be an integer"),
    (lambda: Loop(lr_schedule="cosine"), ValueError, "lr_schedule must be one of"),
    (lambda: Checkpoint(resume=True), ValueError, "resume=True needs checkpoint_dir"),
    (lambda: Parallel(num_nodes=0), ValueError, "num_nodes must be >= 1"),
    (lambda: Compute(dtype=torch.float16), ValueError, "must be torch.float32 or torch.float64"),
    (lambda: KLWarmup(0), ValueError, "kl_warmup_epochs must be >= 1"),
    (lambda: FreeBits(-1.0), ValueError, "free_bits must be finite and > 0"),
    (lambda: FreeBits(0.5, per="unit"), ValueError, "free_bits_per must be 'dim' or 'site'"),
    (lambda: FitConfig(loop={"patience": 3}), TypeError, "loop must be a ppl_vae.Loop(...)"),
    (lambda: FitConfig(objective=Objective(terms=[KLWarmup(2)]), compute=Compute(jit=True)),
     ValueError, "kl_warmup_epochs with jit=True"),
])
def test_a_group_checks_itself_naming_the_argument(build, error, fragment):
    with pytest.raises(error) as info:
        build()
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_valid_groups_and_the_shorthands():
    config = FitConfig(epochs="auto", checkpoint="runs/x", objective=Objective(terms=[
        KLWarmup(3), FreeBits(0.5)]), loop=Loop(max_epochs=40))
    assert config.checkpoint == Checkpoint(dir=Path("runs/x"))
    assert config.auto and config.max_epochs == 40 and config.patience == 20
    assert config.compute.jit is False  # the terms train eagerly
    assert config.warmup_epochs == 3
    assert FitConfig(epochs=7, loop=Loop(patience=4)).max_epochs == 7


LEGACY = dict(num_particles=2, vectorize_particles=False, jit=False, kl_warmup_epochs=2,
              free_bits=0.3, free_bits_per="site", early_stopping_patience=2, time_budget=1e6,
              threads=1)
NEW = dict(objective=Objective(num_particles=2, vectorize_particles=False,
                               terms=[KLWarmup(2), FreeBits(0.3, per="site")]),
           loop=Loop(patience=2, time_budget=1e6), compute=Compute(jit=False, threads=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_old_keywords_warn_naming_the_new_spelling_and_train_the_same_run(dtype):
    with pytest.warns(FutureWarning) as caught:
        old = _fit(dtype, epochs=6, lr=0.05, **LEGACY)
    said = " | ".join(str(w.message) for w in caught)
    for name in LEGACY:
        assert f"fit({name}=" in said, name
    assert "objective=Objective(terms=[KLWarmup(epochs=...)])" in said
    assert "compute=Compute(jit=...)" in said and "loop=Loop(patience=N)" in said
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the new spelling: no warning
        new = _fit(dtype, epochs=6, lr=0.05, **NEW)
    assert old.history.drop(columns="seconds").equals(new.history.drop(columns="seconds"))
    drop = ("programs", "fingerprint")
    assert {k: v for k, v in old.settings.items() if k not in drop} == \
        {k: v for k, v in new.settings.items() if k not in drop}
    assert new.settings["kl_warmup_epochs"] == 2 and new.settings["free_bits_per"] == "site"
    assert new.settings["early_stopping_patience"] == 2 and new.settings["jit"] is False
    assert new.history["kl_weight"].tolist()[:2] == [0.5, 1.0]


def test_one_patience_for_both_old_meanings():
    with pytest.warns(FutureWarning, match="as early_stopping_patience did"):
        stop = _fit(epochs=30, lr=0.05, early_stopping_patience=1)
    new = _fit(epochs=30, lr=0.05, loop=Loop(patience=1))
    assert len(stop.history) == len(new.history) < 30 and new.stopped_early
    with pytest.warns(FutureWarning, match=r"use loop=Loop\(patience=N\), the one patience"):
        conv = _fit(epochs="auto", patience=2, max_epochs=8, tolerance=100.0)
    assert len(conv.history) == 3 and conv.settings["stopped_by"] == "patience"
    assert conv.settings["patience"] == 2 and conv.settings["early_stopping_patience"] is None
    # The old patience with integer epochs and no schedule did nothing: it still does nothing
    # (no early stopping), as before.
    with pytest.warns(FutureWarning):
        fixed = _fit(epochs=5, lr=0.05, patience=1, tolerance=100.0)
    assert len(fixed.history) == 5 and not fixed.stopped_early


def test_an_unknown_keyword_is_still_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'"):
        _fit(epoch=3)


def test_the_recorded_settings_keep_the_previous_release_keys():
    result = _fit(epochs=1)
    assert set(result.settings) >= {
        "estimator", "num_particles", "vectorize_particles", "jit", "epochs", "batch_size", "lr",
        "optimizer", "device", "dtype", "seed", "data_plate", "num_data", "num_validation",
        "early_stopping_patience", "epochs_mode", "max_epochs", "patience", "tolerance",
        "time_budget", "lr_schedule", "kl_warmup_epochs", "free_bits", "free_bits_per",
        "elbo_options", "devices", "strategy", "num_nodes", "world_size", "global_rank",
        "fingerprint"}
    assert result.settings["kl_warmup_epochs"] is None and result.settings["epochs_mode"] == "fixed"


@dataclass(frozen=True)
class ObservedWeight:
    """A term of one's own: the observed sites weighted by ``weight`` (a tempered likelihood)
    during training, recorded in the history and the settings."""

    weight: float
    recordable = True
    warmup_epochs = 0

    def programs(self, model, guide, context: TermContext):
        self.seen.append((context.data_plate, context.steps_per_epoch))
        return _ObsScaled(model, self.weight), guide

    def columns(self, context):
        return {"obs_weight": self.weight}

    def settings(self):
        return {"obs_weight": self.weight}

    seen = []


class _ObsScaled(torch.nn.Module):
    """The model under a handler (a Module, so that the loss owns the model's parameters)."""

    def __init__(self, model, weight):
        super().__init__()
        self.model, self.weight = model, weight

    def forward(self, *batch):
        with _ObsScale(self.weight):
            return self.model(*batch)


class _ObsScale(pyro.poutine.messenger.Messenger):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.weight


def test_a_term_of_ones_own_composes():
    ObservedWeight.seen.clear()
    plain = _fit(epochs=2, compute=Compute(jit=False))
    half = _fit(epochs=2, objective=Objective(terms=[ObservedWeight(0.5)]),
                compute=Compute(jit=False))
    assert ObservedWeight.seen == [("data", 4)]  # the data plate found, 64 rows / 16
    assert half.history["obs_weight"].eq(0.5).all() and half.settings["obs_weight"] == 0.5
    # The training objective changed (half the likelihood), the validation ELBO is the ELBO.
    assert half.history["train_elbo"].iloc[0] > plain.history["train_elbo"].iloc[0]
    assert "obs_weight" not in plain.history


def test_cli_flags_are_generated_and_turned_back_into_fit_keywords(tmp_path):
    train = build_parser().parse_args(
        ["train", "--out", str(tmp_path), "--num-particles", "3", "--early-stopping", "4",
         "--kl-warmup-epochs", "2", "--free-bits", "0.5", "--jit", "false", "--dtype",
         "float64", "--devices", "auto", "--no-progress", "--lr", "0.01"])
    options = fit_options_from_args(train, checkpoint_dir=tmp_path, batch_size=8)
    assert options["objective"] == Objective(num_particles=3, terms=[KLWarmup(2), FreeBits(0.5)])
    assert options["loop"].patience == 4 and options["compute"].dtype == torch.float64
    assert options["compute"].jit is False and options["parallel"].devices == "auto"
    assert options["checkpoint"].dir == tmp_path and options["batch_size"] == 8
    assert options["progress"] is False and options["lr"] == 0.01
    FitConfig(**options)  # what fit builds from them
    # Every group option with a flag is on the train command.
    flags = {s for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
             for s in a.option_strings}
    for cls in (FitConfig, *GROUPS.values(), KLWarmup, FreeBits):
        for f in fields(cls):
            declared = f.metadata.get("flag") or ()
            for flag in (declared,) if isinstance(declared, str) else declared:
                assert flag in flags


def test_a_bad_flag_value_is_a_usage_error_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "x", "--lr", "0"])
    err = capsys.readouterr().err
    assert "argument --lr: expected a finite number > 0, got '0'" in err
    with pytest.raises(SystemExit):  # the CLI's own check: fit's waits for the data's rows
        build_parser().parse_args(["train", "--out", "x", "--batch-size", "0"])
    assert "argument --batch-size: expected a whole number >= 1, got '0'" in capsys.readouterr().err


def test_docs_options_md_is_generated_from_the_declarations():
    table = options_table()
    for name in legacy_keywords():
        assert f"`{legacy_keywords()[name][1]}`" in table
    assert "`--kl-warmup-epochs`" in table and "`--early-stopping`" in table
    assert DOCS.read_text() == table, (
        "docs/options.md is stale: python -m ppl_vae.train.keywords > docs/options.md")


def test_the_groups_are_public():
    for name in ("Objective", "Loop", "Checkpoint", "Parallel", "Compute", "KLWarmup",
                 "FreeBits", "ObjectiveTerm"):
        assert name in ppl_vae.__all__
