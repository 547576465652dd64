"""Step time of ``fit``'s default step against Pyro's own eager step on every corpus program
(``tests/programs/``): ``python -m benchmarks.corpus_steps [--epochs 12 --repeats 3]``.

The reference is ``fit(..., jit=False)``: the same programs, batches, estimator and Adam,
stepped by Pyro's ELBO object itself (``differentiable_loss`` and backward, eagerly), which is
the work a plain Pyro ``SVI.step`` loop does. Each program trains on its corpus data in
batches of 10 with its first estimator; the time per step is the epochs' seconds
(``history.seconds``, batches and steps only) over their steps, leaving out the first
``--warmup`` epochs (the recording of the default step, the allocator's warm-up). Runs
alternate (eager, default, eager, default, ...) so that a busy machine slows both alike; the
median of the repeats is reported. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import warnings
from pathlib import Path

import pyro
import torch

import ppl_vae

PROGRAMS = ["vae_soft", "ssvae", "dmm", "bayes_regression:diagonal", "subsampled", "prodlda",
            "gmm", "scanvi", "scvi_plate", "air_like", "cvae", "sparse_gamma_def"]
BATCH = 10


def _load(program: str):
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    name, _, variant = program.partition(":")
    module = importlib.import_module(f"programs.{name}")
    model, guide = module.make(torch.float32, variant) if variant else module.make(torch.float32)
    return module, model, guide, module.data(torch.float32)


def step_seconds(program: str, jit, epochs: int, warmup: int) -> float:
    """Median seconds per step of one fit of ``program`` after ``warmup`` epochs."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    module, model, guide, data = _load(program)
    batch = data[0].shape[0] if program == "sparse_gamma_def" else BATCH  # per-row parameters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = ppl_vae.fit(model, guide, data, estimator=module.ESTIMATORS[0], epochs=epochs,
                             batch_size=batch, progress=False, jit=jit, lr=1e-3,
                             elbo_options=getattr(module, "ELBO_OPTIONS", {}))
    rows = result.history.iloc[warmup:]
    return float((rows["seconds"] / rows["steps"]).median())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.corpus_steps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", nargs="+", default=PROGRAMS)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, as the other benchmarks
    try:
        print("| program | Pyro eager ms/step | default ms/step | default / eager |")
        print("|---|---|---|---|")
        for program in args.programs:
            eager, default = [], []
            for _ in range(args.repeats):
                eager.append(step_seconds(program, False, args.epochs, args.warmup))
                default.append(step_seconds(program, "auto", args.epochs, args.warmup))
            e, d = statistics.median(eager), statistics.median(default)
            print(f"| {program} | {1e3 * e:.2f} | {1e3 * d:.2f} | {d / e:.2f} |", flush=True)
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
