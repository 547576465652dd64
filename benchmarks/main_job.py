"""The README's main job, ``ppl-vae run --data digits``, timed by phase in a fresh process.

``python -m benchmarks.main_job [-- CLI arguments]`` runs the same three phases as
``ppl-vae run`` (train, evaluate on the test set, diagnose and write the report) through the
public run-folder jobs (:mod:`ppl_vae.runs`, on the CLI's parsed arguments) and prints one JSON
line with the wall seconds of each phase and of the whole process. :func:`measure` starts it with torch's own thread default (no
``OMP_NUM_THREADS``, as a user's shell has it), so that the CLI's ``--threads`` choice is what
is measured.

``python -m benchmarks.main_job --make-run [CLI arguments]`` measures what ``make run`` costs a
user: the whole wall time of ``ppl-vae run --data digits --out DIR --overwrite`` as one command
in a fresh process (the console script ``make run`` calls), and its phases (the training phase
among them) from a second fresh process as above; one JSON line with both (:func:`make_run`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()


def worker(argv) -> dict:
    from ppl_vae.cli.main import build_parser, config_from_args
    from ppl_vae.runs import evaluate_run, report_run, train_into, writing
    from ppl_vae.train.run_dir import load_run

    imported = time.perf_counter() - START
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = build_parser().parse_args(["run", "--data", "digits", "--out", str(out),
                                          "--no-progress", *argv])
        phases = {"import": imported}
        with writing(out):  # the phases of cmd_run, timed one by one (one process)
            t0 = time.perf_counter()
            _, result, _ = train_into(out, args, config=config_from_args(args))
            phases["train"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            run = load_run(out)
            evaluate_run(out, num_samples=args.eval_samples, run=run)
            phases["evaluate"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            report_run(out, run=run)
            phases["diagnose_and_report"] = time.perf_counter() - t0
    phases["total"] = time.perf_counter() - START
    steps = int(result.history["steps"].sum())
    return {"argv": argv, "seconds": phases, "steps": steps,
            "ms_per_step": 1e3 * phases["train"] / max(steps, 1),
            "final_train_elbo": float(result.history["train_elbo"].iloc[-1])}


def measure(argv=(), timeout: float = 1800) -> dict:
    """One fresh process of the main job with extra CLI arguments ``argv``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "benchmarks.main_job", *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root, env=env)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"argv": list(argv), "error": lines[-1] if lines else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cli_command() -> list[str]:
    """``make run``'s command: the venv's ``ppl-vae`` script, else the same entry point."""
    script = Path(sys.executable).with_name("ppl-vae")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ppl_vae.cli"]


def make_run(argv=(), timeout: float = 1800) -> dict:
    """Whole wall seconds of ``ppl-vae run --data digits`` (``make run``'s command, extra CLI
    arguments ``argv``) in a fresh process, with the phases of :func:`measure` beside it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*_cli_command(), "run", "--data", "digits", "--out", str(Path(tmp) / "run"),
               "--overwrite", "--no-progress", *argv]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        whole = time.perf_counter() - start
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"argv": list(argv), "error": lines[-1] if lines else "failed"}
    phases = measure(argv, timeout)
    return {"argv": list(argv), "whole_s": whole,
            "train_s": phases.get("seconds", {}).get("train"), "phases": phases}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--make-run"]:
        print(json.dumps(make_run(sys.argv[2:])))
        sys.exit(0)
    result = worker(sys.argv[1:])
    sys.stdout.flush()
    print(json.dumps(result))
