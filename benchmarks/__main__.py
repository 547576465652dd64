"""``python -m benchmarks``: run the grid, the memory runs, and write ``BENCHMARKS.md``.

Examples
--------
``python -m benchmarks``                      the default grid and memory runs (about 8 minutes on 2 cores)
``python -m benchmarks --quick``              a smoke run (one to two minutes)
``python -m benchmarks --data digits --batch 128 --particles 1 --no-memory``
``taskset -c 1 python -m benchmarks --repeats 3``   pinned to one core (NumPyro's process
inherits the pinning), wall clock as users wait for it (``make bench``)
``python -m benchmarks --diagnostics-only``    only the diagnostics pass at N = 1,000 / 10,000 /
                                              60,000 (updates its section of BENCHMARKS.md)
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import pyro
import torch

from benchmarks import fit_steps, main_job, numpyro_vae
from benchmarks import gpu as gpu_check
from benchmarks.contenders import CONTENDERS, Setting
from benchmarks.diagnostics import DEFAULT_SIZES, diagnostics_lines, measure_all
from benchmarks.memory import measure
from benchmarks.report import replace_section, write
from benchmarks.timing import case_inputs, check_sites_on_device, merge_repeats, time_case

DEFAULT_CONTENDERS = ("torch", "torch_compile", "pyro", "ppl_vae_eager", "ppl_vae",
                      "ppl_vae_compile")
#: The main job as the CLI runs it by default, and as it ran before (eager, torch's threads).
MAIN_JOB_VARIANTS = ((), ("--jit", "false", "--threads", "2"))


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
                   help="wall time (default) or this thread's CPU time (steadier on a busy "
                   "machine) for the torch-side contenders; NumPyro's ratio is always by wall "
                   "clock, its process CPU time beside it")
    p.add_argument("--output", default="BENCHMARKS.md", help="markdown file ('' to skip)")
    p.add_argument("--repeats", type=int, default=1,
                   help="run every case this many times (NumPyro alternating with torch)")
    p.add_argument("--no-numpyro", action="store_true", help="skip the NumPyro contender")
    p.add_argument("--no-main-job", action="store_true",
                   help="skip timing the main job (ppl-vae run --data digits) by phase")
    p.add_argument("--diagnostics-sizes", nargs="+", type=int, default=list(DEFAULT_SIZES),
                   help="N of the diagnostics pass (784-dim rows)")
    p.add_argument("--no-diagnostics", action="store_true", help="skip the diagnostics pass")
    p.add_argument("--diagnostics-only", action="store_true",
                   help="run only the diagnostics pass and replace its section of --output")
    p.add_argument("--warm-compile-cache", action="store_true",
                   help="let Inductor reuse its on-disk cache (compile times then understate "
                   "a first run)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.particles, args.estimator = [128], [1, 32], ["analytic"]
        args.budget, args.memory_steps, args.min_rounds = 1.0, 1_000, 3
        args.no_main_job = True
    args.argv = list(argv)
    if args.quick:
        args.diagnostics_sizes = [min(args.diagnostics_sizes), 2 * min(args.diagnostics_sizes)]
    return args


def run_diagnostics(args) -> list[str]:
    rows = measure_all(args.diagnostics_sizes, threads=args.threads)
    command = "python -m benchmarks --diagnostics-only --diagnostics-sizes " + " ".join(
        str(n) for n in args.diagnostics_sizes)
    return diagnostics_lines(rows, command)


def run_cases(args, contenders, dtype) -> list:
    """Every case of the grid, ``--repeats`` times; NumPyro (particles 1) in its own process
    right after the torch process's rounds of the same case, on the same weights and batches."""
    skip_numpyro = args.no_numpyro or numpyro_vae.unavailable()
    if skip_numpyro and not args.no_numpyro:
        print(f"numpyro: skipped ({skip_numpyro})", flush=True)
    results = []
    for setting in build_grid(args):
        # Pyro's JitTrace_ELBO only exists for the Monte Carlo estimator; the compiled contenders
        # (tens of seconds of compiling per case) run on one particle unless --full.
        names = [c for c in contenders if not (c == "pyro_jit" and setting.estimator != "mc")
                 and not (c.endswith("compile") and setting.num_particles > 1 and not args.full)]
        repeats = []
        for _ in range(max(1, args.repeats)):
            r = time_case(setting, names, device=args.device, dtype=dtype, budget_s=args.budget,
                          warmup=args.warmup, min_rounds=args.min_rounds,
                          max_rounds=args.max_rounds, clock=args.clock)
            if not skip_numpyro and setting.num_particles == 1 and args.device == "cpu":
                num_data, batches, weights = case_inputs(setting, args.device, dtype)
                m = numpyro_vae.measure(setting, weights, batches, num_data,
                                        budget_s=args.budget, warmup=args.warmup,
                                        min_rounds=args.min_rounds, max_rounds=args.max_rounds,
                                        clock=args.clock)
                if "error" in m:
                    print(f"numpyro {setting.label}: {m['error']}", flush=True)
                else:
                    # Ratios use NumPyro's wall clock; its process CPU clock (which counts
                    # XLA's own threads too) is kept beside it as `numpyro_cpu`.
                    r.median_ms["numpyro"], r.steps["numpyro"] = m["median_wall_ms"], m["steps"]
                    r.median_ms["numpyro_cpu"] = m["median_cpu_ms"]
                    r.steps["numpyro_cpu"], r.first_s["numpyro"] = m["steps"], m["first_s"]
            repeats.append(r)
        r = merge_repeats(repeats)
        cells = "  ".join(f"{n} {ms:.2f}" + ("" if n == "torch" else f" ({r.ratio(n):.2f}x)")
                          for n, ms in r.median_ms.items())
        print(f"{setting.label:<28} {cells}", flush=True)
        results.append(r)
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    if any(c.endswith("compile") for c in args.contenders):
        import torch._inductor.config as inductor_config

        # Import Inductor and its C++ toolchain checks once, before any case: otherwise the
        # first compiled contender's first step would also pay for those imports.
        torch.compile(lambda t: t.sin() + 1, backend="inductor")(torch.ones(2))
        # and its one-C++-library mode (what jit="compile" uses on the CPU), so that neither
        # compiled contender pays the other's first build of the shared headers.
        torch.compile(lambda t: t.cos() * 2, backend="inductor",
                      options={"cpp_wrapper": True})(torch.ones(3))
        if not args.warm_compile_cache:  # compile times as a first run sees them
            inductor_config.force_disable_caches = True
    dtype = getattr(torch, args.dtype)
    contenders = [c for c in CONTENDERS if c in args.contenders]
    if "torch" not in contenders:
        contenders.insert(0, "torch")
    start = time.perf_counter()
    if args.diagnostics_only:
        lines = run_diagnostics(args)
        text = replace_section(args.output, "Diagnostics at real size", lines)
        print("\n".join(lines))
        print(f"total {time.perf_counter() - start:.0f} s", flush=True)
        return 0 if text is not None else 1
    results = run_cases(args, contenders, dtype)
    if any("numpyro" in r.median_ms for r in results):
        contenders += ["numpyro", "numpyro_cpu"]
    memory_runs = []
    if not args.no_memory:
        # Hand-written PyTorch and plain Pyro as references (peak memory of each contender),
        # then every estimator with jit off and on (the flat-memory target).
        runs = [("torch", "analytic"), ("pyro", "analytic"), *itertools.product(
            ("ppl_vae_eager", "ppl_vae"), ("analytic", "mc", "enum")),
            ("ppl_vae_compile", "analytic")]
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
        gpu = ["No GPU was used for this table (device `cpu`): none was available. On a "
               "machine with CUDA, `python -m benchmarks.gpu --out gpu-results` runs the GPU "
               "check in a few minutes (784-dim VAE at batch 128 and 1024, the default and "
               "`jit=\"compile\"` against hand-written PyTorch with fused Adam on the same GPU, "
               "host syncs counted under `torch.cuda.set_sync_debug_mode(\"warn\")`, every "
               "sample site's device checked) and writes `gpu.md` and `gpu.json`.", "",
               *gpu_check.carrying_lines()]
    jobs = []
    if not args.no_main_job and args.device == "cpu":
        for variant in MAIN_JOB_VARIANTS:
            job = main_job.measure(variant)
            print("main job", " ".join(variant) or "(defaults)", job.get("error", job.get("seconds")),
                  flush=True)
            jobs.append(job)
    five = None
    if not args.no_main_job and args.device == "cpu":  # fit's own threads: not pinned by --threads
        five = fit_steps.five_epoch_run(repeats=max(1, args.repeats))
        print(f"5-epoch digits run: defaults {five['default_s']:.1f} s, jit=False "
              f"{five['eager_s']:.1f} s", flush=True)
    diag = None if args.no_diagnostics else run_diagnostics(args)
    text = write(args.output, args, results, contenders, memory_runs, gpu, jobs, diag,
                 five_epochs=five)
    print(text.split("## Median")[0])
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
