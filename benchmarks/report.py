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
    # (name, data, batch, particles, vectorize, contender, bound): ratios to hand-written
    # PyTorch with fused Adam (`torch`). The default path is jit="auto"; the compiled one
    # jit="compile"; NumPyro is the contender to be at or ahead of.
    ("default path, 784-dim, batch 128", "784", 128, 1, False, "ppl_vae", 1.10),
    ("default path, digits, batch 128", "digits", 128, 1, False, "ppl_vae", 1.10),
    ("compiled, 784-dim, batch 128", "784", 128, 1, False, "ppl_vae_compile", 0.80),
    ("compiled, digits, batch 128", "digits", 128, 1, False, "ppl_vae_compile", 0.55),
    ("32 vectorized particles (784-dim, batch 128)", "784", 128, 32, True, "ppl_vae", 1.10),
    ("32 vectorized particles (digits, batch 128)", "digits", 128, 32, True, "ppl_vae", 1.10),
)

DESCRIPTIONS = {
    "torch": "hand-written PyTorch, `torch.optim.Adam(..., fused=True)`: **the reference of every "
             "ratio**",
    "torch_unfused": "the same with torch's default Adam",
    "torch_compile": "the hand-written loss under `torch.compile` (Inductor), fused Adam: the "
                     "second reference",
    "pyro": "plain Pyro `SVI`",
    "pyro_jit": "Pyro's `JitTrace_ELBO`",
    "ppl_vae_eager": "the step `fit` runs with `jit=False`",
    "ppl_vae": "the step `fit` runs by default (`jit=\"auto\"`: recorded where static, then "
               "the Adam-fused step its background compile built, once it switched in; timed "
               "after the switch, the compile itself runs beside training)",
    "ppl_vae_jit": "the same with `jit=True`",
    "ppl_vae_compile": "the same with `jit=\"compile\"` (the recorded graph through Inductor)",
    "numpyro": "NumPyro, the same VAE under `jax.jit`, in its own process on the same core "
               "(TraceMeanField_ELBO / Trace_ELBO), by **wall clock** (`block_until_ready` "
               "after each step): NumPyro's ratios and targets use this clock",
    "numpyro_cpu": "the same NumPyro steps by the process CPU clock, which also counts the XLA "
                   "runtime's own threads: beside the wall clock, not used by any target",
}
#: (name, data, batch): the default step (`ppl_vae`) at or ahead of NumPyro by wall clock.
NUMPYRO_TARGETS = (("default at or ahead of NumPyro (wall clock), 784-dim, batch 128", "784", 128),
                   ("default at or ahead of NumPyro (wall clock), digits, batch 128", "digits", 128))
#: Compiled contender -> the contender its compile time is won back against.
PAYBACK = {"ppl_vae_compile": "ppl_vae", "torch_compile": "torch", "numpyro": "torch"}


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
                low, high = r.ratio_range(c)
                spread = f", {low:.2f}-{high:.2f}" if high - low >= 0.005 else ""
                cells.append(f"{ms:.2f} ({r.ratio(c):.2f}x{spread})")
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


def five_epoch_row(five: dict) -> list[str]:
    """The target row of :func:`benchmarks.fit_steps.five_epoch_run`."""
    return ["5-epoch digits run with the defaults (whole wall time)", "ppl_vae",
            "<= 1.25x eager + 0.5 s",
            f"{five['default_s']:.1f} s vs {five['eager_s']:.1f} s with jit=False "
            f"({five['ratio']:.2f}x, median of {five['repeats']})",
            "met" if five["met"] else "NOT met"]


def target_lines(results, memory_runs, five_epochs: dict | None = None) -> list[str]:
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
        low, high = worst.ratio_range(contender)
        spread = f", repeats {low:.2f}-{high:.2f}" if high - low >= 0.005 else ""
        rows.append([name, contender, f"<= {bound:.2f}x",
                     f"{ratio:.2f}x ({worst.setting.estimator}, worst of {len(found)}{spread})",
                     "met" if ratio <= bound else "NOT met"])
    rows += numpyro_target_rows(results)
    if five_epochs:
        rows.append(five_epoch_row(five_epochs))
    compile_rows = [(r, r.first_s["ppl_vae_compile"], r.first_s["numpyro"]) for r in results
                    if "ppl_vae_compile" in r.first_s and "numpyro" in r.first_s]
    if compile_rows:
        r, ours, theirs = max(compile_rows, key=lambda row: row[1] / row[2])
        rows.append(["compile time under NumPyro's (warm-up steps)", "ppl_vae_compile",
                     "< numpyro", f"{ours:.1f} s vs {theirs:.1f} s ({r.setting.label})",
                     "met" if ours < theirs else "NOT met"])
    memory_runs = [m for m in memory_runs if m["contender"].startswith("ppl_vae")]
    ok_runs = [m for m in memory_runs if "error" not in m]
    if memory_runs:
        worst = max((m["max_growth_mib"] for m in ok_runs), default=float("nan"))
        steps = min((m["steps"] for m in ok_runs), default=0)
        names = ", ".join(sorted({m["contender"] for m in memory_runs}))
        rows.append([f"memory flat over {steps} steps (every estimator, each jit mode)",
                     names, "< 5 MiB", f"{worst:+.2f} MiB",
                     "met" if worst < 5 and len(ok_runs) == len(memory_runs) else "NOT met"])
    return _table(["target", "contender", "bound", "measured", "status"], rows)


def numpyro_target_rows(results) -> list[list[str]]:
    """The default step's median over NumPyro's wall-clock median, worst estimator, per target
    (``ppl_vae / numpyro <= 1``)."""
    rows = []
    for name, data, batch in NUMPYRO_TARGETS:
        found = [r for r in results if (r.setting.data, r.setting.batch_size,
                                        r.setting.num_particles) == (data, batch, 1)
                 and {"ppl_vae", "numpyro"} <= set(r.median_ms)]
        if not found:
            rows.append([name, "ppl_vae", "<= 1.00x numpyro", "not run", ""])
            continue
        worst = max(found, key=lambda r: r.median_ms["ppl_vae"] / r.median_ms["numpyro"])
        ratio = worst.median_ms["ppl_vae"] / worst.median_ms["numpyro"]
        rows.append([name, "ppl_vae", "<= 1.00x numpyro",
                     f"{ratio:.2f}x ({worst.median_ms['ppl_vae']:.2f} vs "
                     f"{worst.median_ms['numpyro']:.2f} ms, {worst.setting.estimator})",
                     "met" if ratio <= 1.0 else "NOT met"])
    return rows


def clock_lines(args, contenders) -> list[str]:
    """Which clock each column and ratio uses."""
    torch_clock = ("this thread's CPU time (`--clock cpu`)" if args.clock == "cpu"
                   else "wall clock (`--clock wall`)")
    lines = [f"Clocks: the torch-side contenders are timed by {torch_clock}."]
    if "numpyro" in contenders:
        lines.append("NumPyro's ratios use its **wall clock** (what a user waits for); "
                     "`numpyro_cpu` is the same steps by the process CPU clock, which also "
                     "counts the XLA runtime's own threads.")
        if args.clock == "cpu":
            lines.append("With `--clock cpu` NumPyro's ratio compares its wall clock with the "
                         "torch side's thread CPU time: run `--clock wall` on a quiet machine "
                         "for one clock throughout.")
    return [" ".join(lines), ""]


def compile_lines(results) -> list[str]:
    """Warm-up seconds (recording, checking, compiling) and the steps after which they pay
    back."""
    rows = []
    for r in results:
        for name, against in PAYBACK.items():
            if name in r.first_s and against in r.first_s:
                payback = r.payback_steps(name, against)
                rows.append([r.setting.label, name, f"{r.first_s[name]:.2f}",
                             f"{r.first_s[against]:.2f} ({against})",
                             "never" if payback == float("inf") else f"{payback:.0f}"])
    return _table(["case", "contender", "warm-up s", "warm-up s of the uncompiled",
                   "steps to pay back"], rows)


def main_job_lines(jobs) -> list[str]:
    rows = []
    for job in jobs:
        how = " ".join(job["argv"]) or "defaults (`--jit auto --threads auto`)"
        if "error" in job:
            rows.append([how, "error: " + job["error"], "", "", "", "", ""])
            continue
        t = job["seconds"]
        rows.append([how, f"{t['total']:.1f}", f"{t['import']:.1f}", f"{t['train']:.1f}",
                     f"{job['ms_per_step']:.1f}", f"{t['evaluate']:.1f}",
                     f"{t['diagnose_and_report']:.1f}"])
    return _table(["`ppl-vae run --data digits` with", "total s", "import s", "train s",
                   "train ms/step", "evaluate s", "diagnose + report s"], rows)


DIAGNOSTICS_INTRO = [
    "The diagnostics pass on N synthetic 784-dim binary rows (`benchmarks/diagnostics.py`): "
    "the zoo `VAE(784)` / `MLPEncoder(784)`, every stage with its defaults. Bounds: time linear "
    "in N (growth exponent of time on log-log at most 1.15) and peak resident memory under "
    "2 GiB at the largest N.", ""]


def replace_section(path, title: str, lines: list[str]) -> str | None:
    """Replace (or append) the section ``## title`` of an existing markdown file."""
    if not path:
        return None
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    head, found, rest = text.partition(f"## {title}\n")
    # What follows the section: the next "## " heading on, if any (nothing when appending).
    following = rest[rest.find("\n## ") + 1:] if found and "\n## " in rest else ""
    section = "\n".join([f"## {title}", "", *DIAGNOSTICS_INTRO, *lines])
    new = head.rstrip() + "\n\n" + section + "\n" + ("\n" + following if following else "")
    with open(path, "w") as f:
        f.write(new)
    return new


def write(path, args, results, contenders, memory_runs, gpu_lines, jobs=(),
          diagnostics: list[str] | None = None, five_epochs: dict | None = None) -> str:
    lines = ["# Benchmarks", "",
             "Written by `python -m benchmarks` (see `docs/speed.md`); do not edit by hand.", ""]
    lines += ["## Machine", ""] + machine_lines(args) + [""]
    lines += ["## Targets (ratio of median ms/step to hand-written PyTorch with fused Adam)", ""]
    lines += target_lines(results, memory_runs, five_epochs) + [""]
    lines += ["## Median milliseconds per training step, interleaved", "",
              "Every ratio is to `torch`, hand-written PyTorch with `torch.optim.Adam(..., "
              "fused=True)`; with `--repeats`, the median over repeats and the range of the "
              "repeats' ratios. Same networks, initial weights and batches; one step of each "
              "torch-side contender in turn, NumPyro in its own process right after. "
              "`K`: particles, `loop`/`vec`: Python loop or vectorized.", ""]
    lines += [f"- `{c}`: {DESCRIPTIONS.get(c, c)}" for c in contenders] + [""]
    lines += clock_lines(args, contenders)
    lines += timing_lines(results, contenders) + [""]
    compiled = compile_lines(results)
    if len(compiled) > 2:
        lines += ["## Compile time and payback", "",
                  "Wall seconds of each contender's warm-up steps (the first `--warmup`, 3 by "
                  "default: recording, the checks against eager, Inductor (a fused "
                  "`jit=\"compile\"` step compiles on the third), JAX tracing and XLA "
                  "compilation; Inductor's on-disk cache off unless `--warm-compile-cache`), and "
                  "the steps after which the compiled step's extra warm-up time is won back by "
                  "its faster steps.", ""]
        lines += compiled + [""]
    if jobs:
        lines += ["## The main job by phase (fresh process, torch's default threads)", ""]
        lines += main_job_lines(jobs) + [""]
    if memory_runs:
        lines += ["## Memory over a long run (one fresh process per row)", ""]
        lines += memory_lines(memory_runs) + [""]
    if diagnostics:
        lines += ["## Diagnostics at real size", ""] + DIAGNOSTICS_INTRO + diagnostics + [""]
    lines += ["## GPU", ""] + gpu_lines + [""]
    text = "\n".join(lines)
    if path:
        with open(path, "w") as f:
            f.write(text)
    return text
