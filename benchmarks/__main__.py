"""``python -m benchmarks``: run the grid, the memory runs, and write ``BENCHMARKS.md``.

Examples
--------
``python -m benchmarks``                      the default grid and memory runs (about 8 minutes on 2 cores)
``python -m benchmarks --quick``              a smoke run (one to two minutes)
``python -m benchmarks --data digits --batch 128 --particles 1 --no-memory``
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import pyro
import torch

from benchmarks.contenders import CONTENDERS, Setting
from benchmarks.memory import measure
from benchmarks.report import write
from benchmarks.timing import check_sites_on_device, time_case

DEFAULT_CONTENDERS = ("torch", "pyro", "ppl_vae", "ppl_vae_jit")


def build_grid(args) -> list[Setting]:
    """Particles 1 on every batch size; 8 and 32 particles (looped and vectorized) on the
    smallest batch size only, unless ``--full``: a 32-particle loop at batch 1024 costs seconds
    per step."""
    grid = []
    for data, est, batch in itertools.product(args.data, args.estimator, args.batch):
        for k in args.particles:
            if k > 1 and batch != min(args.batch) and not args.full:
                continue
            for vec in ((False,) if k == 1 else (False, True)):
                grid.append(Setting(est, k, vec, batch, data))
    return grid


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="short smoke run: batch 128, particles 1 and 32, analytic, short budgets")
    p.add_argument("--full", action="store_true",
                   help="every particle count on every batch size (slow)")
    p.add_argument("--data", nargs="+", default=["784", "digits"], choices=["784", "digits"])
    p.add_argument("--batch", nargs="+", type=int, default=[128, 256, 1024])
    p.add_argument("--estimator", nargs="+", default=["analytic", "mc"], choices=["analytic", "mc"])
    p.add_argument("--particles", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--contenders", nargs="+", default=list(DEFAULT_CONTENDERS), choices=CONTENDERS)
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timing per case")
    p.add_argument("--warmup", type=int, default=3, help="rounds discarded per case")
    p.add_argument("--min-rounds", type=int, default=5)
    p.add_argument("--max-rounds", type=int, default=400)
    p.add_argument("--memory-steps", type=int, default=10_000)
    p.add_argument("--no-memory", action="store_true", help="skip the long memory runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall time (default) or this thread's CPU time (steadier on a busy machine)")
    p.add_argument("--output", default="BENCHMARKS.md", help="markdown file ('' to skip)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.particles, args.estimator = [128], [1, 32], ["analytic"]
        args.budget, args.memory_steps, args.min_rounds = 1.0, 1_000, 3
    args.argv = list(argv)
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    dtype = getattr(torch, args.dtype)
    contenders = [c for c in CONTENDERS if c in args.contenders]
    if "torch" not in contenders:
        contenders.insert(0, "torch")
    start = time.perf_counter()
    results = []
    for setting in build_grid(args):
        # Pyro's JitTrace_ELBO only exists for the Monte Carlo estimator.
        names = [c for c in contenders if not (c == "pyro_jit" and setting.estimator != "mc")]
        r = time_case(setting, names, device=args.device, dtype=dtype, budget_s=args.budget,
                      warmup=args.warmup, min_rounds=args.min_rounds, max_rounds=args.max_rounds,
                      clock=args.clock)
        cells = "  ".join(f"{n} {r.median_ms[n]:.2f}" + ("" if n == "torch" else
                          f" ({r.ratio(n):.2f}x)") for n in names)
        print(f"{setting.label:<28} {cells}", flush=True)
        results.append(r)
    memory_runs = []
    if not args.no_memory:
        # Hand-written PyTorch and plain Pyro as references (peak memory of each contender),
        # then every estimator with jit off and on (the flat-memory target).
        runs = [("torch", "analytic"), ("pyro", "analytic"), *itertools.product(
            ("ppl_vae", "ppl_vae_jit"), ("analytic", "mc", "enum"))]
        for contender, estimator in runs:
            m = measure(contender, estimator, steps=args.memory_steps, device=args.device,
                        threads=args.threads)
            print(f"memory {contender} {estimator}: "
                  + (m["error"] if "error" in m else f"growth {m['growth_mib']:+.2f} MiB"),
                  flush=True)
            memory_runs.append(m)
    if torch.device(args.device).type == "cuda":
        sites = check_sites_on_device(args.device, dtype)
        gpu = [f"- device: {torch.cuda.get_device_name(torch.device(args.device))}",
               "- sample sites of the zoo VAE (model and guide): "
               + ", ".join(f"`{k}` on {v}" for k, v in sites.items())]
    else:
        gpu = ["No GPU was used for this table (device `cpu`). On a machine with one, run "
               "`python -m benchmarks --device cuda --data 784 --batch 1024 --particles 1` "
               "for the GPU rows; the suite then also checks that every sample site lives on "
               "the GPU."]
    text = write(args.output, args, results, contenders, memory_runs, gpu)
    print(text.split("## Median")[0])
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
