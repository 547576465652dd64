"""Memory over a long run, one contender per fresh process (so that resident memory belongs to it).

Run as ``python -m benchmarks.memory --contender ppl_vae --estimator mc --steps 10000``; prints
one JSON line. :func:`measure` launches it and parses the line.

Resident set size (RSS) is read from ``/proc/self/statm`` after ``gc.collect()``; peak RSS is
the process's high-water mark (``VmHWM``). Growth is RSS at the end minus RSS after the warm-up steps (allocator pools and
lazily created state settle during the warm-up).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20
    except OSError:
        return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB.

    Linux's ``ru_maxrss`` survives ``execve`` (a worker would report its parent's peak), so the
    high-water mark of the process's own address space (``VmHWM``) is read where it exists.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def worker(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--contender", default="ppl_vae")
    parser.add_argument("--estimator", default="analytic")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--particles", type=int, default=1)
    parser.add_argument("--vectorize", action="store_true")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import pyro
    import torch

    from benchmarks.contenders import Setting, initial_weights, make_contender
    from benchmarks.timing import fixed_batches, load_data
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    device = torch.device(args.device)
    setting = Setting(args.estimator, args.particles, args.vectorize, args.batch_size, args.data)
    data = load_data(args.data, device, torch.float32)
    batches = fixed_batches(data, args.batch_size, 16, seed=0)
    weights = initial_weights(data.shape[1], device, torch.float32, 0, batches[0])
    gc.collect()
    baseline = rss_mib()
    step = make_contender(args.contender, setting, weights, data.shape[0], 1e-3, (VAE, MLPEncoder))
    pyro.set_rng_seed(0)
    warmup = min(args.warmup, args.steps // 2)
    every = max(1, (args.steps - warmup) // args.samples)
    samples = []
    for i in range(args.steps):
        step(batches[i % len(batches)])
        done = i + 1
        if done == warmup or (done > warmup and (done - warmup) % every == 0):
            gc.collect()
            samples.append((done, rss_mib()))
    after_warmup = samples[0][1]
    # ru_maxrss and statm round differently; the peak is at least the largest sample.
    peak = max(peak_rss_mib(), max(r for _, r in samples))
    return {
        "contender": args.contender, "estimator": args.estimator, "steps": args.steps,
        "baseline_mib": baseline, "after_warmup_mib": after_warmup, "end_mib": samples[-1][1],
        "growth_mib": samples[-1][1] - after_warmup,
        "max_growth_mib": max(r for _, r in samples) - after_warmup,
        "peak_rss_mib": peak, "peak_over_baseline_mib": peak - baseline,
        "samples": samples,
    }


def measure(contender: str, estimator: str, *, steps: int, data: str = "digits",
            batch_size: int = 64, device: str = "cpu", threads: int = 1,
            timeout: float = 600) -> dict:
    """Run one worker process and return its measurements (or ``{"error": ...}``)."""
    cmd = [sys.executable, "-m", "benchmarks.memory", "--contender", contender,
           "--estimator", estimator, "--steps", str(steps), "--data", data,
           "--batch-size", str(batch_size), "--device", device, "--threads", str(threads),
           "--warmup", str(max(100, steps // 10))]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root)
    if done.returncode != 0:
        return {"contender": contender, "estimator": estimator, "steps": steps,
                "error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(worker()))
