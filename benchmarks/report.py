"""``BENCHMARKS.md``: machine, versions, date, and the tables (pandas ``to_markdown``-free, so the
suite needs no ``tabulate``)."""

from __future__ import annotations

import datetime
import os
import platform
import sys

import pyro
import torch

TARGETS = (
    # (name, data, batch, particles, vectorize, contender, bound); the speed targets hold for
    # fit's step eager (ppl_vae) and recorded (ppl_vae_jit); the stretch goal for the latter.
    ("784-dim, batch 128", "784", 128, 1, False, "ppl_vae", 1.10),
    ("784-dim, batch 128", "784", 128, 1, False, "ppl_vae_jit", 1.10),
    ("digits, batch 128", "digits", 128, 1, False, "ppl_vae", 1.25),
    ("digits, batch 128", "digits", 128, 1, False, "ppl_vae_jit", 1.25),
    ("32 vectorized particles (784-dim, batch 128)", "784", 128, 32, True, "ppl_vae", 1.10),
    ("32 vectorized particles (784-dim, batch 128)", "784", 128, 32, True, "ppl_vae_jit", 1.10),
    ("32 vectorized particles (digits, batch 128)", "digits", 128, 32, True, "ppl_vae", 1.10),
    ("32 vectorized particles (digits, batch 128)", "digits", 128, 32, True, "ppl_vae_jit", 1.10),
    ("stretch: compiled vs eager hand-written, 784-dim, batch 128", "784", 128, 1, False,
     "ppl_vae_jit", 1.00),
    ("stretch: compiled vs eager hand-written, digits, batch 128", "digits", 128, 1, False,
     "ppl_vae_jit", 1.00),
)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(args) -> list[str]:
    import ppl_vae

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {_cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} "
        f"{platform.release()}; GPU: {gpu}",
        f"- versions: Python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"pyro-ppl {pyro.__version__}, ppl-vae {getattr(ppl_vae, '__version__', '?')}",
        f"- settings: device {args.device}, {args.dtype}, {args.threads} thread(s), clock "
        f"{args.clock}, time budget {args.budget} s per case, loss summed over the batch, "
        "Adam lr 1e-3, Pyro validation off for every contender",
        "- command: `" + " ".join(["python -m benchmarks", *args.argv]) + "`",
    ]


def timing_lines(results, contenders) -> list[str]:
    header = ["case", *[f"{c} ms (x torch)" if c != "torch" else "torch ms" for c in contenders],
              "steps"]
    rows = []
    for r in results:
        cells = [r.setting.label]
        for c in contenders:
            ms = r.median_ms.get(c)
            if ms is None:
                cells.append("-")
            elif c == "torch":
                cells.append(f"{ms:.2f}")
            else:
                cells.append(f"{ms:.2f} ({r.ratio(c):.2f}x)")
        cells.append(str(min(r.steps.values())))
        rows.append(cells)
    lines = _table(header, rows)
    if any(r.peak_mib for r in results):
        lines += ["", "Peak device memory per step (MiB above the resident parameters):", ""]
        lines += _table(["case", *contenders], [
            [r.setting.label, *[f"{r.peak_mib.get(c, float('nan')):.1f}" for c in contenders]]
            for r in results if r.peak_mib])
    return lines


def memory_lines(runs: list[dict]) -> list[str]:
    rows = []
    for m in runs:
        name = m["contender"] + (f" ({m['estimator']})" if m.get("estimator") else "")
        if "error" in m:
            rows.append([name, str(m["steps"]), "error: " + m["error"], "", "", ""])
            continue
        rows.append([name, str(m["steps"]), f"{m['growth_mib']:+.2f}",
                     f"{m['max_growth_mib']:+.2f}", f"{m['peak_over_baseline_mib']:.1f}",
                     f"{m['peak_rss_mib']:.0f}"])
    return _table(["contender (estimator)", "steps", "RSS growth after warm-up (MiB)",
                   "max growth (MiB)", "peak RSS over baseline (MiB)", "peak RSS (MiB)"], rows)


def target_lines(results, memory_runs) -> list[str]:
    by_key = {(r.setting.data, r.setting.batch_size, r.setting.num_particles,
               r.setting.vectorize, r.setting.estimator): r for r in results}
    rows = []
    for name, data, batch, k, vec, contender, bound in TARGETS:
        found = [by_key[key] for key in by_key
                 if key[:4] == (data, batch, k, vec) and contender in by_key[key].median_ms]
        if not found:
            rows.append([name, contender, f"<= {bound:.2f}x", "not run", ""])
            continue
        worst = max(found, key=lambda r: r.ratio(contender))
        ratio = worst.ratio(contender)
        rows.append([name, contender, f"<= {bound:.2f}x",
                     f"{ratio:.2f}x ({worst.setting.estimator}, worst of {len(found)})",
                     "met" if ratio <= bound else "NOT met"])
    memory_runs = [m for m in memory_runs if m["contender"].startswith("ppl_vae")]
    ok_runs = [m for m in memory_runs if "error" not in m]
    if memory_runs:
        worst = max((m["max_growth_mib"] for m in ok_runs), default=float("nan"))
        steps = min((m["steps"] for m in ok_runs), default=0)
        rows.append([f"memory flat over {steps} steps (every estimator, jit on and off)",
                     "ppl_vae, ppl_vae_jit", "< 5 MiB", f"{worst:+.2f} MiB",
                     "met" if worst < 5 and len(ok_runs) == len(memory_runs) else "NOT met"])
    return _table(["target", "contender", "bound", "measured", "status"], rows)


def write(path, args, results, contenders, memory_runs, gpu_lines) -> str:
    lines = ["# Benchmarks", "",
             "Written by `python -m benchmarks` (see `docs/speed.md`); do not edit by hand.", ""]
    lines += ["## Machine", ""] + machine_lines(args) + [""]
    lines += ["## Targets (ratio of median ms/step to hand-written PyTorch)", ""]
    lines += target_lines(results, memory_runs) + [""]
    lines += ["## Median milliseconds per training step, interleaved", "",
              "`torch`: hand-written PyTorch (default `torch.optim.Adam`); `pyro`: plain Pyro `SVI`; "
              "`pyro_jit`: Pyro's `JitTrace_ELBO`; `ppl_vae`: the step `fit` runs; `ppl_vae_jit`: "
              "the same with `jit=True`. Same networks, initial weights and batches; one step of "
              "each in turn. `K`: particles, `loop`/`vec`: Python loop or vectorized.", ""]
    lines += timing_lines(results, contenders) + [""]
    if memory_runs:
        lines += ["## Memory over a long run (one fresh process per row)", ""]
        lines += memory_lines(memory_runs) + [""]
    lines += ["## GPU", ""] + gpu_lines + [""]
    text = "\n".join(lines)
    if path:
        with open(path, "w") as f:
            f.write(text)
    return text
