"""Step time of ``fit`` against plain Pyro ``SVI`` on the same programs, data and optimizer:
``python -m benchmarks.fit_steps [--repeats 3]``.

- ``sparse_gamma_def`` (``tests/programs/sparse_gamma_def.py``): per-row guide parameters,
  204 global weights, 32 rows, full batch (``batch_size=N``), ``Trace_ELBO``;
- the digits VAE (the zoo's ``vae`` + ``mlp``, latent 10, hidden 200), batches of 128 of 1,437
  rows, ``TraceMeanField_ELBO`` (``estimator="analytic"``); Pyro's loop scales the data plate by
  N / B with ``poutine.scale``, as ``fit`` does.

``fit``'s time per step is its epochs' seconds (``history.seconds``: batches, steps, the
divergence check) over its steps, so its pre-flight checks are left out; Pyro's is its
``svi.step`` loop over the same batches. Both leave out the first epochs (``WARMUP``): the
steady state, after ``fit``'s recording of the step (``jit="auto"``) and the allocator's
warm-up. Runs alternate (Pyro, fit, Pyro, fit, ...) and the
median of the repeats is reported, so a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

import ppl_vae
from ppl_vae.data.datasets import load_digits
from ppl_vae.programs.registry import build

LR = 0.05
WARMUP = 0.2  # the fraction of epochs left out of the timing


def _sparse_gamma_def():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from programs import sparse_gamma_def as sgd

    (x,) = sgd.data()
    return sgd.model, sgd.guide, x, x.shape[0], 250, "mc"


def _digits_vae():
    digits = load_digits()
    torch.manual_seed(0)
    options = {"latent_dim": 10, "hidden": 200}
    model = build("model", "vae", digits, **options)
    guide = build("guide", "mlp", digits, **options)
    return model, guide, digits.train, 128, 10, "analytic"


def _pyro_step_seconds(model, guide, x, batch_size, epochs, estimator) -> float:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    scale = x.shape[0] / batch_size
    loss = Trace_ELBO() if estimator == "mc" else TraceMeanField_ELBO()
    svi = SVI(poutine.scale(model, scale), poutine.scale(guide, scale),
              pyro.optim.Adam({"lr": LR}), loss)
    seconds, steps = [], []
    for epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(epoch)) \
            if batch_size < x.shape[0] else torch.arange(x.shape[0])
        start = time.perf_counter()
        for i in range(0, x.shape[0], batch_size):
            svi.step(x[order[i : i + batch_size]])
        seconds.append(time.perf_counter() - start)
        steps.append(len(range(0, x.shape[0], batch_size)))
    skip = int(WARMUP * epochs)
    return sum(seconds[skip:]) / sum(steps[skip:])


def _fit_step_seconds(model, guide, x, batch_size, epochs, estimator) -> float:
    pyro.clear_param_store()
    result = ppl_vae.fit(model, guide, x, estimator=estimator, batch_size=batch_size,
                         epochs=epochs, lr=LR, seed=0, progress=False, threads=None)
    kept = result.history.iloc[int(WARMUP * epochs):]
    return float(kept["seconds"].sum() / kept["steps"].sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'program':<18} {'pyro ms/step':>13} {'fit ms/step':>12} {'fit / pyro':>11}")
    for name, make in (("sparse_gamma_def", _sparse_gamma_def), ("digits VAE", _digits_vae)):
        model, guide, x, batch_size, epochs, estimator = make()
        pyro_s, fit_s = [], []
        for _ in range(args.repeats):
            pyro_s.append(_pyro_step_seconds(model, guide, x, batch_size, epochs, estimator))
            fit_s.append(_fit_step_seconds(model, guide, x, batch_size, epochs, estimator))
        p, f = statistics.median(pyro_s), statistics.median(fit_s)
        print(f"{name:<18} {p * 1e3:>13.2f} {f * 1e3:>12.2f} {f / p:>11.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
