"""The GPU check, ready to run: ``python -m benchmarks.gpu --out gpu-results``.

On a CUDA machine, in a few minutes: the 784-dim VAE (``ppl_vae.models.VAE`` +
``ppl_vae.guides.MLPEncoder``, the networks of ``benchmarks/contenders.py``) on 60,000 synthetic
MNIST-size Bernoulli rows generated on the device, at batch 128 and 1024, for

- ``torch``: hand-written PyTorch with ``torch.optim.Adam(fused=True)``, **the reference**;
- ``ppl_vae``: the step ``fit`` runs by default (``jit="auto"``);
- ``ppl_vae_compile``: the same with ``jit="compile"``;

all on the same GPU, weights and batches. Steady-state milliseconds per step are timed with CUDA
events over blocks of steps (``--steps``), one block of each contender in turn, ``--repeats``
times (interleaved, so drift hits all alike), after ``--warmup`` steps each (recording and
compiling happen there; their wall seconds are reported; a step that compiles in the background
needs enough of them to have switched, which ``block_ms`` in the JSON shows).
``torch.cuda.set_sync_debug_mode("warn")``
is on over every timed step: each host synchronization a step makes raises a warning, which is
caught and counted per contender. Before timing, the model and guide are traced on a batch and
every sample site's value must live on the device (else the script stops naming the sites).
It writes ``gpu.md`` (a markdown table) and ``gpu.json`` to ``--out``.

On a machine without CUDA the same script runs on the CPU (``--device cpu --tiny``: a few
steps on small settings; the test suite does this); the sync-debug part is then skipped with
a note in the table.

Carrying the dependencies to a device machine
---------------------------------------------
A lent device machine has Python 3.12, torch, numpy, pandas, scipy, xarray, matplotlib, h5py,
scikit-learn and tqdm, but no Pyro or ArviZ, and it cannot reach a package registry. Download the
missing wheels here, at the versions this environment has (``--wheel-requirements`` prints them:
the packages in :data:`CARRIED`), into a folder that git ignores and that travels with the
working tree::

    echo /.whl/ >> .git/info/exclude
    .venv/bin/python -m benchmarks.gpu --wheel-requirements > /tmp/gpu-requirements.txt
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl -r /tmp/gpu-requirements.txt

(``--no-deps`` keeps torch out: the device has its own; these are pure-Python wheels, about
3 MB.) On the device, install them beside the project and run::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:. python3 -m benchmarks.gpu --out "$OUT"

(with the device tool: ``carry: [".whl"]``). ``PYTHONPATH=.`` imports ``ppl_vae`` and
``benchmarks`` from the working tree without installing the project, whose ``torch>=2.13`` pin
the device's torch may not meet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch

from benchmarks.contenders import Setting, initial_weights, make_contender

CONTENDERS = ("torch", "ppl_vae", "ppl_vae_compile")
#: What ``import ppl_vae`` needs beyond a device machine's image (torch, numpy, pandas, scipy,
#: xarray, matplotlib, tqdm are there): carried as wheels, see the module's docstring.
CARRIED = ("pyro-ppl", "pyro-api", "arviz-base", "arviz-stats", "arviz-plots", "xarray-einstats")
OBS_DIM = 784
#: (rows, batch sizes, warm-up steps, steps per block, repeats): the full check and ``--tiny``.
FULL = (60_000, (128, 1024), 30, 100, 5)
TINY = (512, (16, 32), 2, 4, 2)


def wheel_requirements() -> list[str]:
    """``name==version`` of each package in :data:`CARRIED`, as installed here."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in CARRIED]


def carrying_lines() -> list[str]:
    """Markdown for ``BENCHMARKS.md``: how to run this check on a device machine that has CUDA
    and torch but neither Pyro nor ArviZ, nor a registry."""
    return [
        "To run it on a lent GPU machine without a package registry, carry the packages it "
        "lacks as wheels (pure Python, about 3 MB), at the versions installed here:", "",
        "```bash",
        "echo /.whl/ >> .git/info/exclude",
        ".venv/bin/python -m benchmarks.gpu --wheel-requirements > /tmp/gpu-requirements.txt",
        "python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 "
        "--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 "
        "-d .whl -r /tmp/gpu-requirements.txt",
        "# on the device machine, with .whl carried along the working tree:",
        "python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl",
        'PYTHONPATH=/tmp/site:. python3 -m benchmarks.gpu --out "$OUT"',
        "```"]


def synthetic_rows(n: int, device, dtype, seed: int = 0) -> torch.Tensor:
    """``n`` MNIST-size {0, 1} rows drawn on ``device`` from a random nonlinear decoder (as
    :func:`ppl_vae.data.datasets.make_binary_images`): nothing crosses from the host."""
    g = torch.Generator(device=device).manual_seed(seed)
    latent, hidden = 10, 64
    w1 = torch.randn(latent, hidden, generator=g, device=device, dtype=dtype) / latent**0.5
    w2 = torch.randn(hidden, OBS_DIM, generator=g, device=device, dtype=dtype) * 3 / hidden**0.5
    z = torch.randn(n, latent, generator=g, device=device, dtype=dtype)
    return torch.bernoulli(torch.sigmoid(torch.tanh(z @ w1) @ w2 - 1.0), generator=g)


def site_devices(x: torch.Tensor, model=None, guide=None) -> dict[str, str]:
    """Device of every sample site's value of ``model`` and ``guide`` (default: the zoo's
    ``VAE(784)`` and ``MLPEncoder(784)`` on ``x``'s device) traced on ``x``; a plate's indices
    are no draw and are left out."""
    from pyro.poutine.util import site_is_subsample

    from ppl_vae.programs.checks import trace_pair

    if model is None:
        vae, encoder = _zoo()
        model, guide = vae(OBS_DIM).to(x.device, x.dtype), encoder(OBS_DIM).to(x.device, x.dtype)
    model_trace, guide_trace = trace_pair(model, guide, (x,))
    return {f"{where}:{name}": str(site["value"].device)
            for where, trace in (("model", model_trace), ("guide", guide_trace))
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def check_sites(x: torch.Tensor, model=None, guide=None) -> dict[str, str]:
    """:func:`site_devices`, raising ``AssertionError`` naming each site off ``x``'s device."""
    found = site_devices(x, model, guide)
    wrong = {k: v for k, v in found.items() if torch.device(v).type != x.device.type}
    if wrong or not found:  # raised, not asserted: `python -O` must not skip the check
        raise AssertionError(f"sample sites not on {x.device}: {wrong or 'no sites traced'}")
    return found


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(step, batches, device: torch.device) -> tuple[float, list[str]]:
    """Milliseconds per step over ``batches`` (one step each) and the host synchronizations
    they made (the messages of the sync-debug warnings; CUDA only).

    The debug mode is switched on after the synchronization that starts the block and off
    before the one that ends it, so only the steps' own synchronizations are counted.
    """
    cuda = device.type == "cuda"
    _synchronize(device)
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
            start.record()
        t0 = time.perf_counter()
        try:
            for x in batches:
                step(x)
        finally:
            if cuda:
                end.record()
                torch.cuda.set_sync_debug_mode("default")
        _synchronize(device)
        wall_ms = 1e3 * (time.perf_counter() - t0)
    ms = start.elapsed_time(end) if cuda else wall_ms
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    return ms / len(batches), syncs


def measure_batch(data: torch.Tensor, batch: int, contenders, *, warmup: int, steps: int,
                  repeats: int, seed: int = 0, lr: float = 1e-3) -> list[dict]:
    """One row per contender at batch size ``batch``: median ms per step over the interleaved
    repeats, the ratio to ``torch`` of each repeat, host syncs per timed step, warm-up seconds."""
    device = data.device
    g = torch.Generator(device=device).manual_seed(seed)
    batches = [data.index_select(0, torch.randint(data.shape[0], (batch,), generator=g,
                                                  device=device)) for _ in range(8)]
    setting = Setting("analytic", 1, False, batch, str(OBS_DIM))
    weights = initial_weights(OBS_DIM, device, data.dtype, seed, batches[0])
    pyro.clear_param_store()
    made = {name: make_contender(name, setting, weights, data.shape[0], lr, _zoo())
            for name in contenders}
    warm = {}
    for name, step in made.items():  # recording, the checks against eager, compiling
        t0 = time.perf_counter()
        for i in range(warmup):
            step(batches[i % len(batches)])
        _synchronize(device)
        warm[name] = time.perf_counter() - t0
    block = [batches[i % len(batches)] for i in range(steps)]
    ms = {name: [] for name in made}
    syncs = {name: [] for name in made}
    names = list(made)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            per_step, found = time_block(made[name], block, device)
            ms[name].append(per_step)
            syncs[name] += found
    pyro.clear_param_store()
    rows = []
    for name in names:
        ratios = [a / b for a, b in zip(ms[name], ms["torch"], strict=True)]
        rows.append({
            "batch": batch, "contender": name, "median_ms": statistics.median(ms[name]),
            "ratio": statistics.median(ms[name]) / statistics.median(ms["torch"]),
            "ratio_range": [min(ratios), max(ratios)], "steps": steps * repeats,
            "warmup_s": warm[name], "host_syncs": len(syncs[name]),
            "host_syncs_per_step": len(syncs[name]) / (steps * repeats),
            "sync_messages": sorted(set(syncs[name]))[:5],
            # Each block in turn: a default step that switches to a compiled one in the
            # background shows here as later blocks faster than the first.
            "block_ms": ms[name],
        })
    return rows


def _zoo():
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    return VAE, MLPEncoder


def markdown(result: dict) -> str:
    """The table of :func:`run` as markdown."""
    s = result["settings"]
    lines = ["# GPU check (`python -m benchmarks.gpu`)", "",
             f"- device: {result['device_name']} (`{result['device']}`), {s['dtype']}",
             f"- versions: {result['versions']}",
             f"- settings: 784-dim VAE, {s['rows']:,} synthetic rows made on the device, "
             f"{s['warmup']} warm-up steps, {s['repeats']} interleaved blocks of {s['steps']} "
             f"steps per contender ({s['clock']}), Adam lr 1e-3, analytic KL, Pyro validation "
             "off",
             f"- command: `{result['command']}`", "",
             "| batch | contender | ms/step | x torch (repeats) | host syncs/step | warm-up s |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        low, high = row["ratio_range"]
        syncs = (f"{row['host_syncs_per_step']:.2f}" if result["sync_debug"] else "not checked")
        lines.append(f"| {row['batch']} | {row['contender']} | {row['median_ms']:.3f} | "
                     f"{row['ratio']:.2f}x ({low:.2f}-{high:.2f}) | {syncs} | "
                     f"{row['warmup_s']:.2f} |")
    lines += ["", "Sample sites (model and guide traced on a batch): "
              + ", ".join(f"`{k}` on {v}" for k, v in result["sites"].items()), ""]
    lines += [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="folder for gpu.md and gpu.json (required to run the check)")
    p.add_argument("--wheel-requirements", action="store_true",
                   help="print the pinned packages to carry to a device machine, and exit")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--tiny", action="store_true", help="a few steps on small settings (a test)")
    p.add_argument("--batch", nargs="+", type=int, help="batch sizes (default 128 1024)")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--rows", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--steps", type=int, help="steps per timed block")
    p.add_argument("--repeats", type=int, help="timed blocks per contender")
    args = p.parse_args(argv)
    if not (args.out or args.wheel_requirements):
        p.error("--out FOLDER is required: where gpu.md and gpu.json are written")
    rows, batches, warmup, steps, repeats = TINY if args.tiny else FULL
    args.rows = args.rows or rows
    args.batch = args.batch or list(batches)
    args.warmup = warmup if args.warmup is None else args.warmup
    args.steps, args.repeats = args.steps or steps, args.repeats or repeats
    if "torch" not in args.contenders:
        args.contenders.insert(0, "torch")
    args.argv = list(argv)
    return args


def run(args) -> dict:
    """Check the sites, time every batch size, and return the result :func:`main` writes."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here; "
                         "run with --device cpu --tiny for the smoke run")
    dtype = getattr(torch, args.dtype)
    pyro.enable_validation(False)  # as every contender of the suite: its checks sync the host
    data = synthetic_rows(args.rows, device, dtype)
    sites = check_sites(data[:8])
    rows = []
    for batch in args.batch:
        rows += measure_batch(data, batch, args.contenders, warmup=args.warmup,
                              steps=args.steps, repeats=args.repeats)
        for row in rows[-len(args.contenders):]:
            print(f"b{batch} {row['contender']:<16} {row['median_ms']:8.3f} ms "
                  f"({row['ratio']:.2f}x) syncs/step {row['host_syncs_per_step']:.2f}",
                  flush=True)
    cuda = device.type == "cuda"
    notes = [] if cuda else [
        "No GPU: this ran on the CPU, so the host-sync count (torch.cuda.set_sync_debug_mode) "
        "was skipped and the times say nothing about a GPU."]
    notes.append("Every ratio is to `torch` (hand-written, fused Adam) in the same repeat; "
                 "the median ms over the repeats, the range of the repeats' ratios.")
    return {
        "device": str(device), "sync_debug": cuda,
        "device_name": torch.cuda.get_device_name(device) if cuda else "CPU (no GPU)",
        "versions": f"Python {sys.version.split()[0]}, torch {torch.__version__}, "
                    f"pyro-ppl {pyro.__version__}",
        "settings": {"clock": "CUDA events" if cuda else "wall clock", "dtype": args.dtype,
                     "rows": args.rows, "warmup": args.warmup, "steps": args.steps,
                     "repeats": args.repeats},
        "command": " ".join(["python -m benchmarks.gpu", *args.argv]),
        "sites": sites, "rows": rows, "notes": notes,
    }


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.wheel_requirements:
        print("\n".join(wheel_requirements()))
        return 0
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "gpu.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
