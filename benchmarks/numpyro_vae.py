"""NumPyro contender: the same VAE, weights and batches under ``jax.jit``, in its own process.

``python -m benchmarks.numpyro_vae --input case.npz --estimator analytic`` prints one JSON line
(median ms per step by wall clock and by process CPU clock, steps timed, wall seconds of the
warm-up steps: tracing plus XLA compilation on the first). Both clocks are read around every
step: the wall clock is what a user waits for and what the suite's ratios use; the process CPU
clock also counts the XLA runtime's own threads (even with one intra-op thread), so it
overstates NumPyro's step and is reported beside it, never in a ratio.
:func:`measure` writes the case (initial weights and batches of the torch contenders), starts
the worker with one XLA thread and this process's CPU affinity (so on the same core when the
suite runs under ``taskset``), and parses the line. NumPyro and JAX are optional (the ``bench``
extra); without them :func:`unavailable` says so and the suite skips this contender.

The programs are written as NumPyro's VAE example writes them: ``numpyro.param`` for each
weight, ``numpyro.plate`` over the batch with ``handlers.scale`` by N / batch,
``TraceMeanField_ELBO`` for ``analytic`` and ``Trace_ELBO`` for ``mc``, ``numpyro.optim.Adam``,
and ``jax.jit(svi.update)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

LATENT, MIN_SCALE = 20, 1e-4


def unavailable() -> str | None:
    """Why the NumPyro contender cannot run here, or ``None``."""
    missing = [m for m in ("jax", "numpyro") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed (pip install -e '.[bench]')" if missing else None


def _programs(num_data: int):
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro import handlers

    def linear(prefix, h):
        return h @ numpyro.param(f"{prefix}_w", None).T + numpyro.param(f"{prefix}_b", None)

    def model(x):
        with numpyro.plate("data", x.shape[0]), handlers.scale(scale=num_data / x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
            logits = linear("dec1", jax.nn.softplus(linear("dec0", z)))
            # validate_args=False as in the torch contenders: digits are grey levels in [0, 1].
            likelihood = dist.Bernoulli(logits=logits, validate_args=False).to_event(1)
            numpyro.sample("x", likelihood, obs=x)

    def guide(x):
        with numpyro.plate("data", x.shape[0]), handlers.scale(scale=num_data / x.shape[0]):
            out = linear("enc1", jax.nn.softplus(linear("enc0", x)))
            loc, log_scale = out[..., :LATENT], out[..., LATENT:]
            numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale) + MIN_SCALE).to_event(1))

    return model, guide


def worker(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.numpyro_vae")
    p.add_argument("--input", required=True)
    p.add_argument("--estimator", default="analytic", choices=["analytic", "mc"])
    p.add_argument("--num-data", type=int, required=True)
    p.add_argument("--budget", type=float, default=3.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-rounds", type=int, default=5)
    p.add_argument("--max-rounds", type=int, default=400)
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="the clock of median_ms (both are always reported)")
    args = p.parse_args(argv)

    import jax
    import numpy as np
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

    case = np.load(args.input)
    params = {k[2:]: jax.numpy.asarray(case[k]) for k in case.files if k.startswith("p_")}
    batches = [jax.numpy.asarray(case[k]) for k in sorted(k for k in case.files if k.startswith("b_"))]
    # Batches prepared ahead: on the device and done before the first timed step.
    params, batches = jax.block_until_ready((params, batches))
    model, guide = _programs(args.num_data)
    loss = TraceMeanField_ELBO() if args.estimator == "analytic" else Trace_ELBO()
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), loss)
    # The torch contenders' initial weights as the initial values of both programs' params.
    state = svi.init(jax.random.PRNGKey(0), batches[0], init_params=params)
    update = jax.jit(svi.update)
    wall, cpu, start, first = [], [], None, 0.0
    while len(wall) < args.warmup + args.max_rounds:
        if len(wall) == args.warmup:
            start = time.perf_counter()
        x = batches[len(wall) % len(batches)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        state, value = update(state, x)
        value.block_until_ready()  # JAX dispatches asynchronously: wait for the step itself
        wall.append(time.perf_counter() - wall0)
        cpu.append(time.process_time() - cpu0)
        if len(wall) <= args.warmup:  # the warm-up steps' wall time (XLA compiles on the first)
            first += wall[-1]
        if len(wall) == 1:
            first_loss = value
        if (len(wall) >= args.warmup + args.min_rounds
                and time.perf_counter() - start > args.budget):
            break
    assert bool(np.isfinite(np.asarray(value))), f"NumPyro loss is not finite: {value} {first_loss}"
    wall_ms = 1e3 * statistics.median(wall[args.warmup:])
    cpu_ms = 1e3 * statistics.median(cpu[args.warmup:])
    return {"median_ms": cpu_ms if args.clock == "cpu" else wall_ms,
            "median_wall_ms": wall_ms, "median_cpu_ms": cpu_ms,
            "steps": len(wall) - args.warmup, "first_s": first,
            "versions": f"jax {jax.__version__}, numpyro {numpyro.__version__}"}


def measure(setting, weights, batches, num_data: int, *, budget_s: float, warmup: int,
            min_rounds: int, max_rounds: int, clock: str, timeout: float = 600) -> dict:
    """Run one NumPyro worker on the torch contenders' case; ``{"error": ...}`` on failure."""
    import numpy as np

    arrays = {}
    for part, prefix in (("encoder", "enc"), ("decoder", "dec")):
        for key, value in weights[part].items():  # "0.weight" -> enc0_w
            layer, kind = key.split(".")
            arrays[f"p_{prefix}{int(layer) // 2}_{kind[0]}"] = value.detach().cpu().numpy()
    for i, b in enumerate(batches):
        arrays[f"b_{i:03d}"] = b.detach().cpu().numpy()
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
           "intra_op_parallelism_threads=1", "JAX_PLATFORMS": "cpu"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "case.npz")
        np.savez(path, **arrays)
        cmd = [sys.executable, "-m", "benchmarks.numpyro_vae", "--input", path,
               "--estimator", setting.estimator, "--num-data", str(num_data),
               "--budget", str(budget_s), "--warmup", str(warmup),
               "--min-rounds", str(min_rounds), "--max-rounds", str(max_rounds),
               "--clock", clock]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root,
                              env=env)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(worker()))
