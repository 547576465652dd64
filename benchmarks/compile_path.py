"""The compile path of ``jit="auto"``: ``python -m benchmarks.compile_path [--steps 200]``.

- steady state per step, one thread, interleaved rounds (torch, default, compile, torch, ...):
  hand-written PyTorch with fused Adam (the reference), ``fit``'s default step (``jit="auto"``)
  once its background compile switched in, and ``jit="compile"`` (Adam fused into the graph), on
  the digits VAE and the 784-dim VAE at batch 128 (``benchmarks.contenders``' networks);
- compile time cold (a fresh cache folder) and warm (the same folder, a new process), and graphs
  per run, from a 5-epoch digits ``fit`` with the defaults in a subprocess;
- that run's wall time against Pyro's eager ``SVI`` step over the same epochs.

Wall clock throughout (``time.perf_counter``); every ratio is against the fused-Adam torch step
measured in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import torch

from benchmarks.contenders import Setting, make_contender
from benchmarks.timing import case_inputs
from ppl_vae.recording.summary import step_summary

LR = 1e-3


def _default_step(setting, weights, num_data, models):
    """``fit``'s default step (``jit="auto"``) and its recorder, on the zoo's VAE."""
    from ppl_vae.estimators.registry import make_elbo
    from ppl_vae.train.state import init_state, update

    vae_cls, encoder_cls = models
    model = vae_cls(weights["obs_dim"]).to(weights["device"], weights["dtype"])
    guide = encoder_cls(weights["obs_dim"]).to(weights["device"], weights["dtype"])
    model.decoder.load_state_dict(weights["decoder"])
    guide.net.load_state_dict(weights["encoder"])
    elbo = make_elbo(setting.estimator, jit="auto", max_plate_nesting=1)
    state = init_state(model, guide, elbo, (weights["first_batch"],), num_data=num_data,
                       data_plate="data", lr=LR)

    def step(x):
        nonlocal state
        state, loss = update(state, (x,))
        return loss

    def wait(timeout):
        return (state.recorder if state.fused is None else state.fused).wait_for_compiles(timeout)

    return step, wait, state


def steady_state(data: str, steps: int, rounds: int) -> dict:
    """Per-step wall time of the three contenders, interleaved, after the default's switch."""
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    torch.set_num_threads(1)
    os.environ["PPL_VAE_BACKGROUND_COMPILE"] = "3"
    setting = Setting("analytic", 1, False, 128, data)
    num_data, batches, weights = case_inputs(setting, "cpu", torch.float32)
    models = (VAE, MLPEncoder)
    default, wait, state = _default_step(setting, weights, num_data, models)
    contenders = {"torch": make_contender("torch", setting, weights, num_data, LR, models),
                  "default": default,
                  "compile": make_contender("ppl_vae_compile", setting, weights, num_data, LR,
                                            models)}
    waiter = state.recorder if state.fused is None else state.fused
    i = 0
    while not waiter.background_started and i < 200:
        default(batches[i % 8])
        i += 1
    t0 = time.perf_counter()
    wait(900)
    waited = time.perf_counter() - t0
    for step in contenders.values():  # warm-up: recordings, compiles, checks, the switch
        for i in range(8):
            step(batches[i % 8])
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, step in contenders.items():
            t = time.perf_counter()
            for i in range(steps):
                step(batches[i % 8])
            times[name].append((time.perf_counter() - t) / steps)
    median = {name: statistics.median(v) for name, v in times.items()}
    return {"data": data, "ms_per_step": {k: round(v * 1e3, 3) for k, v in median.items()},
            "ratio_to_torch": {k: round(v / median["torch"], 3) for k, v in median.items()},
            "default": step_summary(state.recorder, state.fused, state.padding_note),
            "background_compile_s": round(waited, 1)}


_RUN = textwrap.dedent("""
    import json, os, sys, time
    os.environ["PPL_VAE_COMPILE_CACHE"] = sys.argv[1]
    t0 = time.perf_counter()
    import pyro, torch
    import ppl_vae
    from ppl_vae.data.datasets import load_digits
    from ppl_vae.programs.registry import build
    torch.set_num_threads(1)
    digits = load_digits()
    x = digits.train
    def programs():
        torch.manual_seed(0); pyro.clear_param_store()
        options = {"latent_dim": 10, "hidden": 200}
        return (build("model", "vae", digits, **options),
                build("guide", "mlp", digits, **options))
    if sys.argv[2] == "pyro":
        from pyro.infer import SVI, TraceMeanField_ELBO
        from pyro import poutine
        model, guide = programs()
        svi = SVI(poutine.scale(model, x.shape[0] / 128), poutine.scale(guide, x.shape[0] / 128),
                  pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
        t1 = time.perf_counter()
        for epoch in range(5):
            order = torch.randperm(x.shape[0])
            for i in range(0, x.shape[0], 128):
                svi.step(x[order[i:i + 128]])
        print(json.dumps({"train_s": time.perf_counter() - t1, "wall_s": time.perf_counter() - t0}))
    else:
        model, guide = programs()
        t1 = time.perf_counter()
        result = ppl_vae.fit(model, guide, x, epochs=5, batch_size=128, estimator="analytic",
                             lr=1e-3, progress=False)
        print(json.dumps({"train_s": time.perf_counter() - t1, "wall_s": time.perf_counter() - t0,
                          "epoch_s": result.history["seconds"].round(3).tolist(),
                          "compile": result.settings.get("compile")}))
    sys.stdout.flush()
""")


def _run(cache: str, which: str, tree: str | None = None) -> dict:
    """One 5-epoch digits run in a fresh process; ``tree``: another checkout's package (the
    before of a comparison), imported from its root."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    if tree is not None:
        env["PYTHONPATH"] = tree
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _RUN, cache, which], capture_output=True,
                         text=True, env=env, check=True, cwd=tree)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - t, 2)
    return result


def main_job_runs(before: str | None = None) -> dict:
    """Pyro's eager loop, the default cold (fresh cache folder) and warm, Pyro again; with
    ``before``, that checkout's default too."""
    cache = tempfile.mkdtemp(prefix="ppl-vae-inductor-")
    out = {"pyro_eager": _run(cache, "pyro"), "default_cold": _run(cache, "fit"),
           "default_warm": _run(cache, "fit")}
    if before is not None:
        out["before_default"] = _run(cache, "fit", before)
    out["pyro_eager_again"] = _run(cache, "pyro")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--part", choices=["steady", "runs", "all"], default="all")
    parser.add_argument("--data", nargs="+", default=["digits", "784"])
    parser.add_argument("--before", help="root of another checkout to run the default of")
    args = parser.parse_args(argv)
    if args.part in ("runs", "all"):
        print(json.dumps(main_job_runs(args.before)), flush=True)
    if args.part in ("steady", "all"):
        for data in args.data:
            print(json.dumps(steady_state(data, args.steps, args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
