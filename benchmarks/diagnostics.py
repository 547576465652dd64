"""The diagnostics pass at real size: time and peak memory of ``evaluate``, ``to_arviz``,
``diagnose`` and ``report`` on N synthetic 784-dim rows, one fresh process per (stage, N).

Run as ``python -m benchmarks.diagnostics --stage diagnose --n 10000 --folder DIR`` (prints
one JSON line); :func:`measure_all` launches the grid and :func:`diagnostics_lines` writes its
section of ``BENCHMARKS.md``. The programs are the zoo's ``VAE(784)`` and ``MLPEncoder(784)``
(400 hidden units, 20 latent dimensions) with their initial weights: the cost of the pass does
not depend on training. Every stage runs with its default settings (``diagnose``: 200 draws per
point, gaps on 32 points, SBC, 100 exported points); ``diagnose`` writes the run-folder files
as ``ppl-vae diagnose`` does and ``report`` reads them back as ``ppl-vae report`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.memory import peak_rss_mib, rss_mib
from ppl_vae.evaluation.fastpath import plain_path

STAGES = ("evaluate", "to_arviz", "diagnose", "report")
DEFAULT_SIZES = (1_000, 10_000, 60_000)
PEAK_BOUND_MIB = 2048
EXPONENT_BOUND = 1.15  # time ~ N^b; linear within the noise of a shared machine
# Issue 24's goals for diagnose at the goal size: seconds in one process, and the share of that
# with two processes (--devices 2).
GOAL_N, GOAL_SECONDS, GOAL_TWO_SHARE = 60_000, 150.0, 0.6
# Extra diagnose runs at the largest N: (label, extra worker arguments, environment).
VARIANTS = (("--devices 2", ["--devices", "2"], {}),
            ("recorded pass off", [], {"PPL_VAE_BACKGROUND_COMPILE": "0"}))


def _data(n: int):
    import torch

    from ppl_vae.data.datasets import make_binary_images

    # All rows of the generator (test_fraction ~ 0): the synthetic MNIST stand-in.
    x = make_binary_images(n + 1, obs_dim=784, test_fraction=1 / (n + 1), seed=0).train
    return torch.as_tensor(x[:n], dtype=torch.float32)


def _programs():
    import torch

    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    torch.manual_seed(0)
    return VAE(784), MLPEncoder(784)


def _run_stage(stage: str, model, guide, x, folder: Path, devices=None) -> dict | None:
    from ppl_vae import diagnose, evaluate, report, to_arviz
    from ppl_vae.runs import read_diagnostics, write_diagnostics

    out: dict = {}
    if stage == "evaluate":
        out["evaluation"] = dict(evaluate(model, guide, x))
        (folder / "evaluation.json").write_text(json.dumps(out["evaluation"]))
    elif stage == "to_arviz":
        tree = to_arviz(model, guide, x)
        out["exported_points"] = int(tree["posterior"].sizes["data"])
    elif stage == "diagnose":
        result = diagnose(model, guide, x, progress=False, devices=devices)
        if result is None:
            return None
        write_diagnostics(folder, result, digest="benchmark", num_draws=200, points=100)
        out["nc_mib"] = (folder / "diagnostics.nc").stat().st_size / 2**20
        out["timings"] = result.timings
        out["draws_path"] = result.tree.attrs.get("draws_path")
    elif stage == "report":
        result = read_diagnostics(folder, digest="benchmark")
        if result is None:
            raise SystemExit("report: run the evaluate and diagnose stages first")
        evaluation = json.loads((folder / "evaluation.json").read_text())
        report(model, guide, x, out=folder / "report.html", diagnostics=result,
               evaluation=evaluation)
    return out


def worker(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.diagnostics")
    p.add_argument("--stage", choices=STAGES, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--folder", required=True, help="where diagnose writes and report reads")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--path", choices=("fast", "plain"), default="fast",
                   help="plain: the per-point passes without ppl_vae.evaluation.fastpath")
    p.add_argument("--devices", type=int, default=None, help="diagnose: processes (--devices)")
    args = p.parse_args(argv)
    import pyro
    import torch

    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    x = _data(args.n)
    model, guide = _programs()
    baseline = rss_mib()
    start = time.perf_counter()
    with plain_path() if args.path == "plain" else contextlib.nullcontext():
        out = _run_stage(args.stage, model, guide, x, folder, devices=args.devices)
    seconds = time.perf_counter() - start
    if out is None:  # a worker process of a sharded diagnose
        raise SystemExit(0)
    return {"stage": args.stage, "n": args.n, "seconds": seconds, "baseline_mib": baseline,
            "peak_rss_mib": peak_rss_mib(), "path": args.path, "devices": args.devices, **out}


def measure_all(sizes=DEFAULT_SIZES, *, threads: int = 1, folder: str | None = None,
                timeout: float = 3600, variants=VARIANTS) -> list[dict]:
    """Every stage at every size, each in a fresh process (so that its peak is its own), then
    ``diagnose`` at the largest size once per variant (rows with a ``variant`` label)."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix="ppl-vae-bench-") as tmp:
        for n in sizes:
            where = Path(folder or tmp) / f"n{n}"
            for stage in STAGES:
                rows.append(_measure(stage, n, where, threads, timeout))
        n = max(sizes)
        for label, extra, env in variants:
            where = Path(folder or tmp) / f"n{n}-{len(rows)}"
            rows.append(_measure("diagnose", n, where, threads, timeout, extra, env, label))
    return rows


def _measure(stage, n, where, threads, timeout, extra=(), env=None, label=None) -> dict:
    """One worker process: its JSON row, or ``error`` with the last line it printed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "benchmarks.diagnostics", "--stage", stage, "--n", str(n),
           "--folder", str(where), "--threads", str(threads), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr else "failed"
        row = {"stage": stage, "n": n, "error": tail}
    else:
        row = json.loads(done.stdout.strip().splitlines()[-1])
    if label is not None:
        row["variant"] = label
    name = stage if label is None else f"{stage} ({label})"
    print("diagnostics " + (f"{name} N={n}: {row['seconds']:.1f} s, peak "
                            f"{row['peak_rss_mib']:.0f} MiB" if "error" not in row
                            else f"{name} N={n}: error {row['error']}"), flush=True)
    return row


def compare_paths(n: int, *, repeats: int = 1, threads: int = 1, devices=None,
                  timeout: float = 7200) -> list[dict]:
    """``diagnose`` on N rows by the plain and the fast path, alternating fresh processes
    (interleaved, so that a shared machine's load falls on both), printing seconds per phase."""
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="ppl-vae-paths-") as tmp:
        for rep in range(repeats):
            for path in ("plain", "fast"):
                cmd = [sys.executable, "-m", "benchmarks.diagnostics", "--stage", "diagnose",
                       "--n", str(n), "--folder", f"{tmp}/{path}{rep}", "--threads",
                       str(threads), "--path", path]
                if devices:
                    cmd += ["--devices", str(devices)]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                      cwd=root, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                phases = ", ".join(f"{k} {v:.1f}" for k, v in row["timings"].items())
                print(f"diagnose N={n} {path}: {row['seconds']:.1f} s, peak "
                      f"{row['peak_rss_mib']:.0f} MiB ({phases})", flush=True)
                rows.append(row)
    return rows


def growth_exponent(rows: list[dict], stage: str) -> float:
    """Least-squares slope of log(seconds) on log(N) for one stage (NaN with < 2 sizes)."""
    pts = [(math.log(r["n"]), math.log(r["seconds"])) for r in rows
           if r["stage"] == stage and "error" not in r and r["seconds"] > 0
           and "variant" not in r]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def diagnostics_lines(rows: list[dict], command: str) -> list[str]:
    """The ``BENCHMARKS.md`` section: per (stage, N) time, peak memory and file size, then the
    growth exponent and the bounds per stage."""
    body = []
    for r in rows:
        stage = r["stage"] + (f" ({r['variant']})" if "variant" in r else "")
        if "error" in r:
            body.append([stage, f"{r['n']:,}", "error: " + r["error"], "", ""])
            continue
        nc = f"{r['nc_mib']:.1f}" if "nc_mib" in r else ""
        body.append([stage, f"{r['n']:,}", f"{r['seconds']:.1f}",
                     f"{r['peak_rss_mib']:.0f}", nc])
    lines = [f"Command: `{command}`. One fresh process per row; peak is the process's resident "
             "high-water mark (`VmHWM`), data and programs included.", ""]
    lines += _table(["stage", "N (784-dim rows)", "seconds", "peak RSS (MiB)",
                     "diagnostics.nc (MiB)"], body) + [""]
    sizes = sorted({r["n"] for r in rows})
    bounds = []
    for stage in STAGES:
        b = growth_exponent(rows, stage)
        top = [r for r in rows if r["stage"] == stage and r["n"] == sizes[-1] and "error" not in r
               and "variant" not in r]
        peak = top[0]["peak_rss_mib"] if top else float("nan")
        ok = (not math.isnan(b) and b <= EXPONENT_BOUND and peak < PEAK_BOUND_MIB)
        bounds.append([stage, f"{b:.2f}", f"<= {EXPONENT_BOUND}", f"{peak:.0f} MiB at "
                       f"N={sizes[-1]:,}", f"< {PEAK_BOUND_MIB} MiB", "met" if ok else "NOT met"])
    lines += _table(["stage", "growth exponent (time ~ N^b)", "bound", "peak", "bound",
                     "status"], bounds)
    return lines + goal_lines(rows)


def goal_lines(rows: list[dict]) -> list[str]:
    """Issue 24's goals for ``diagnose`` at :data:`GOAL_N` rows (nothing when not measured):
    seconds in one process and, with ``--devices 2``, the share of them; then the seconds per
    phase of each of those runs."""
    def find(variant):
        return next((r for r in rows if r["stage"] == "diagnose" and r["n"] == GOAL_N
                     and r.get("variant") == variant and "error" not in r), None)

    one, two = find(None), find("--devices 2")
    if one is None:
        return []
    body = [[f"diagnose at {GOAL_N:,} rows, one process", f"<= {GOAL_SECONDS:.0f} s",
             f"{one['seconds']:.1f} s", "met" if one["seconds"] <= GOAL_SECONDS else "NOT met"]]
    if two is not None:
        share = two["seconds"] / one["seconds"]
        body.append([f"diagnose at {GOAL_N:,} rows, `--devices 2`",
                     f"<= {GOAL_TWO_SHARE}x of one process", f"{share:.2f}x "
                     f"({two['seconds']:.1f} s)", "met" if share <= GOAL_TWO_SHARE else "NOT met"])
    lines = ["", "Goals of `diagnose` at the goal size:", ""]
    lines += _table(["goal", "bound", "measured", "status"], body) + [""]
    phases = [r for r in rows if r["stage"] == "diagnose" and r["n"] == GOAL_N
              and "error" not in r and r.get("timings")]
    names = list(dict.fromkeys(k for r in phases for k in r["timings"]))
    lines += _table(["run", "total s", *[f"{k} s" for k in names]],
                    [[r.get("variant") or "default", f"{r['seconds']:.1f}",
                      *[f"{r['timings'].get(k, float('nan')):.1f}" for k in names]]
                     for r in phases])
    return lines


if __name__ == "__main__":
    print(json.dumps(worker()))
