"""The ``ppl-vae`` command line.

Subcommands are registered by ``register(subparsers)`` functions; modules that add commands are
listed in ``COMMAND_MODULES``. Every error ends the command with one line on stderr and exit
code 2 (``--debug`` prints the traceback too).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import sys
import traceback
import warnings
from pathlib import Path

from ppl_vae.cli.common import (
    add_program_arguments,
    open_run,
    positive_int,
    require_run,
)
from ppl_vae.cli.errors import one_line
from ppl_vae.cli.workflow import add_logger_argument, make_loggers
from ppl_vae.estimators.registry import ESTIMATORS
from ppl_vae.programs.registry import describe
from ppl_vae.runs import evaluate_run, is_writer, report_run, train_into, writing
from ppl_vae.storage.files import MANIFEST_NAME, CorruptFileError, verify_folder
from ppl_vae.train.checkpoint import CHECKPOINT_NAME
from ppl_vae.train.flags import add_fit_arguments
from ppl_vae.train.run_dir import data_record, program_record
from ppl_vae.train.user_data import data_function_record, is_data_function

# `ppl-vae run`'s training defaults (measured on the bundled digits, see the README).
RUN_LR, RUN_BATCH_SIZE = 3e-3, 32

COMMAND_MODULES = ["ppl_vae.cli.main", "ppl_vae.cli.estimators", "ppl_vae.cli.diagnostics",
                   "ppl_vae.cli.workflow"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default (``run``'s own defaults included, since they
    are set on its parser): ``none`` for an unset option unless its help already says what the
    default does; nothing for on/off flags (off unless given)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.nargs == 0 or action.required or "default" in text
                or action.default is argparse.SUPPRESS):
            return text
        if action.default is None:
            return text + " (default: none)"
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other error, and the defaults
    in every command's help (the subcommands' parsers are of this class too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    key = key.replace("-", "_")
    if key in ("latent_dim", "hidden"):  # checked as --latent-dim and --hidden are
        sizes = value.strip("[]").split(",") if key == "hidden" else [value]
        try:
            parsed = [positive_int(v.strip()) for v in sizes]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{key}: {exc}") from None
        return key, parsed[0] if key == "latent_dim" or len(parsed) == 1 else parsed
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vae",
                   help="zoo name (see `ppl-vae models`) or file.py:name")
    p.add_argument("--guide", default="mlp", help="zoo name or file.py:name")
    p.add_argument("--data", default="digits",
                   help="digits | binary | linear_gaussian | regression | eight_schools | "
                   "mnist:DIR | file.npy/.npz/.csv | file.py:function (returns a tensor, a "
                   "tuple of tensors, or a Dataset)")
    p.add_argument("--latent-dim", type=positive_int, default=None,
                   help="latent size, passed to model and guide (default: the program's own)")
    p.add_argument("--hidden", type=positive_int, nargs="+", default=None,
                   help="hidden layer widths, passed to model and guide (default: the "
                   "program's own)")
    p.add_argument("--model-option", type=_option, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="extra model constructor option (JSON value; repeatable; default: none)")
    p.add_argument("--guide-option", type=_option, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="extra guide constructor option (JSON value; repeatable; default: none)")
    p.add_argument("--with-labels", action="store_true",
                   help="pass (x, label) batches to the programs (conditional models)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in OUT (its run files only)")
    p.add_argument("--eval-samples", type=positive_int, default=100,
                   help="K for the evaluation's IWAE")
    # fit's options, from their declarations (ppl_vae.train.options).
    add_fit_arguments(p)
    add_logger_argument(p)


def config_from_args(args) -> dict:
    """The run's config.json: zoo programs by name, user files by path and sha256."""

    shared = {}
    if args.latent_dim is not None:
        shared["latent_dim"] = args.latent_dim
    if args.hidden is not None:
        shared["hidden"] = args.hidden[0] if len(args.hidden) == 1 else list(args.hidden)
    return {
        **program_record("model", args.model), **program_record("guide", args.guide),
        # A data function is recorded as a model file is: by its path and the file's sha256.
        **(data_function_record(args.data) if is_data_function(args.data)
           else {"data": data_record(args.data)}),
        "model_options": {**shared, **dict(args.model_option)},
        "guide_options": {**shared, **dict(args.guide_option)},
        "use_labels": bool(args.with_labels),
    }


def _parallel(args) -> dict:
    return {"devices": args.devices, "strategy": args.strategy, "num_nodes": args.num_nodes}


def train_run(args, out: Path):
    """Train as the arguments say into ``out`` (:func:`ppl_vae.runs.train_into`); exit quietly
    in a data-parallel worker other than rank 0 (rank 0 writes and evaluates the run)."""
    loggers = make_loggers(args.logger, out) if is_writer(**_parallel(args)) else ()
    trained = train_into(out, args, config=config_from_args(args), loggers=loggers)
    if trained is None:
        raise SystemExit(0)
    return trained


def _print_evaluation(run, ev, num_samples: int) -> None:
    print(f"test-set evaluation ({run.dataset.test.shape[0]} rows, K={num_samples}):")
    print(ev)


def cmd_train(args) -> int:
    out = Path(args.out)
    with writing(out, overwrite=args.overwrite, **_parallel(args)):
        _, result, _ = train_run(args, out)
        print(result.history.tail(5).to_string(index=False))
        # The trained parameters, read back on the CPU exactly as `ppl-vae evaluate` reads them
        # (load_run starts from an empty param store, so pyro.module cannot hand the rebuilt
        # networks the stale tensors of the ones just trained).
        run = open_run(args, out)
        ev = evaluate_run(out, num_samples=args.eval_samples, run=run)
        _print_evaluation(run, ev, args.eval_samples)
    return 0


def cmd_evaluate(args) -> int:
    run_dir = require_run(args.run_dir)
    with writing(run_dir):
        run = open_run(args, run_dir)
        ev = evaluate_run(run_dir, num_samples=args.num_samples, run=run)
        _print_evaluation(run, ev, args.num_samples)
    return 0


def run_folder(data: str) -> Path:
    """``run --out``'s default: ``runs/<data name>`` (``digits``, ``mnist`` for ``mnist:DIR``,
    a file's stem for ``file.npy`` or ``file.py:function``)."""
    kind, sep, _ = data.partition(":")
    name = "mnist" if sep and kind == "mnist" else Path(kind if sep else data).stem
    return Path("runs") / (name or "data")


def cmd_run(args) -> int:
    """The main job: train on the data, evaluate, and write the report."""
    import time

    if args.out is None:  # set here, so that an interrupted run's hint names the folder
        args.out = str(run_folder(args.data))
    out = Path(args.out)
    with writing(out, overwrite=args.overwrite, **_parallel(args)):
        clock = time.perf_counter()
        train_run(args, out)
        timings = {"train": time.perf_counter() - clock}
        clock = time.perf_counter()
        run = open_run(args, out)  # the trained parameters, as `ppl-vae evaluate` reads them
        _print_evaluation(run, evaluate_run(out, num_samples=args.eval_samples, run=run),
                          args.eval_samples)
        timings["evaluate"] = time.perf_counter() - clock
        print(f"run folder: {out.resolve()}")
        print("diagnosing the posterior and writing the report ...", flush=True)
        path = report_run(out, run=run, progress=False if args.no_progress else None,
                          timings=timings)
    print(f"report: {path.resolve()}")
    print("seconds per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return 0


def cmd_verify(args) -> int:
    """Check every file of a run folder against its manifest."""
    run_dir = require_run(args.run_dir)
    status = verify_folder(run_dir)
    for name, state in status.items():
        print(f"  {name:<24} {state if state in ('ok', 'missing') else 'does not match'}")
    bad = [name for name, state in status.items() if state != "ok"]
    if bad:
        raise CorruptFileError(f"{run_dir}: {', '.join(bad)} do(es) not match {MANIFEST_NAME} "
                               "(changed, truncated or corrupted): restore them or retrain")
    print(f"every file of {run_dir} matches {MANIFEST_NAME}")
    return 0


def cmd_models(args) -> int:
    for kind in ("model", "guide"):
        print(f"{kind}s:")
        for name, line in describe(kind):
            print(f"  {name:<16} {line}")
    return 0


def cmd_estimators(args) -> int:
    for name, spec in ESTIMATORS.items():
        print(f"  {name:<10} {spec.summary}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model/guide pair and write a run folder")
    add_training_arguments(p)
    p.add_argument("--out", required=True, help="run folder to write")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "run", help="the main job: train, evaluate and write the report",
        description="The main job: train to convergence, evaluate and write the report. Its "
        f"training defaults differ from `train`'s: --epochs auto, --lr {RUN_LR:g}, --batch-size "
        f"{RUN_BATCH_SIZE}, --lr-schedule plateau (measured on the bundled digits: about 100 "
        "epochs). The run folder defaults to runs/<data name>.")
    add_training_arguments(p)
    # The main job trains to convergence: about 100 epochs of the digits VAE at these settings.
    p.set_defaults(epochs="auto", lr=RUN_LR, batch_size=RUN_BATCH_SIZE, lr_schedule="plateau")
    p.add_argument("--out", default=None,
                   help="run folder to write (default: runs/<data name>, e.g. runs/digits, "
                   "runs/mnist, runs/<file stem>)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("evaluate", help="print the evaluation table of a run folder")
    p.add_argument("run_dir", help="a run folder (written by train or run)")
    p.add_argument("--num-samples", type=positive_int, default=100,
                   help="K for the importance-weighted bound (IWAE)")
    add_program_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("verify", help="check every file of a run folder against its sha256 "
                       "manifest")
    p.add_argument("run_dir", help="a run folder")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("models", help="list the model and guide zoo")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("estimators", help="list the ELBO estimators")
    p.set_defaults(func=cmd_estimators)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ppl-vae", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    parser.add_argument("--version", action="version", version="%(prog)s " + importlib.metadata.version("ppl-vae"),
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for command in sub.choices.values():  # `ppl-vae train --debug` works as well
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="print tracebacks of errors")
    return parser


def _warning_line(command: str):
    """``warnings.showwarning`` that prints one line, like the errors."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip().splitlines()
        print(f"ppl-vae {command}: warning: {text[0] if text else category.__name__}",
              file=sys.stderr)
    return show


def _resume_hint(args) -> str:
    """For an interrupted ``train`` / ``run``: where the last checkpoint is and how to go on."""
    out = getattr(args, "out", None)
    if out is None or not (Path(out) / CHECKPOINT_NAME).is_file():
        return ""
    instead = " instead of --overwrite" if getattr(args, "overwrite", False) else ""
    return (f"; {Path(out) / CHECKPOINT_NAME} holds the last finished epoch: rerun the same "
            f"command with --resume{instead} to continue")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.showwarning = _warning_line(args.command)
            return args.func(args)
    except KeyboardInterrupt:
        print(f"ppl-vae {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error becomes one line (and exit code 2)
        if args.debug:
            traceback.print_exc()
        print(f"ppl-vae {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
