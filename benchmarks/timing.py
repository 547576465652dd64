"""Interleaved timing: every contender takes one step on the same batch, in turn (A B C A B C),
so that drift of the machine (other processes, frequency scaling) hits all of them alike."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field

import pyro
import torch

from benchmarks.contenders import Setting, initial_weights, make_contender
from ppl_vae.data.datasets import load_digits, make_binary_images

_DATA_CACHE: dict[str, torch.Tensor] = {}


def load_data(name: str, device, dtype) -> torch.Tensor:
    """Training rows of ``"784"`` (synthetic binary 28x28 images, 4,000 rows) or ``"digits"``
    (scikit-learn's 8x8 digits, 1,437 rows), on ``device`` in ``dtype``."""
    if name not in _DATA_CACHE:
        if name == "784":
            _DATA_CACHE[name] = make_binary_images(5000, obs_dim=784, seed=0).train
        elif name == "digits":
            _DATA_CACHE[name] = load_digits().train
        else:
            raise ValueError(f"unknown data {name!r}; choose '784' or 'digits'")
    return _DATA_CACHE[name].to(device=device, dtype=dtype)


def fixed_batches(data: torch.Tensor, batch_size: int, count: int, seed: int) -> list:
    """``count`` batches of exactly ``batch_size`` rows from a seeded permutation (wrapping)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(data.shape[0], generator=g)
    order = order.repeat(batch_size * count // data.shape[0] + 1)
    return [data.index_select(0, order[i * batch_size:(i + 1) * batch_size].to(data.device))
            for i in range(count)]


def case_inputs(setting: Setting, device, dtype, seed: int = 0):
    """(rows in the data set, the 8 batches, the initial weights) of a case: the same for every
    contender, in this process or another (NumPyro's)."""
    data = load_data(setting.data, torch.device(device), dtype)
    batches = fixed_batches(data, setting.batch_size, 8, seed)
    return data.shape[0], batches, initial_weights(data.shape[1], device, dtype, seed, batches[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class CaseResult:
    """Median ms per step and the warm-up steps' wall seconds (``first_s``: the first
    ``warmup`` steps, where recording, the checks against eager and compiling happen; a fused
    ``jit="compile"`` step compiles on the third) per contender. Every ratio is to ``torch``
    (hand-written, fused Adam)."""

    setting: Setting
    median_ms: dict[str, float]
    steps: dict[str, int]
    peak_mib: dict[str, float] = field(default_factory=dict)
    first_s: dict[str, float] = field(default_factory=dict)
    #: Ratio to ``torch`` of each repeat (``--repeats``), for the range in the table.
    ratios: dict[str, list[float]] = field(default_factory=dict)

    def ratio(self, name: str) -> float:
        return self.median_ms[name] / self.median_ms["torch"]

    def ratio_range(self, name: str) -> tuple[float, float]:
        found = self.ratios.get(name) or [self.ratio(name)]
        return min(found), max(found)

    def payback_steps(self, name: str, against: str) -> float:
        """Steps after which ``name``'s extra warm-up cost (compiling) is won back by its
        faster steps against ``against`` (``inf`` when it is not faster)."""
        extra = (self.first_s[name] - self.first_s[against]) * 1e3
        saved = self.median_ms[against] - self.median_ms[name]
        return max(extra, 0.0) / saved if saved > 0 else float("inf")


def time_case(setting: Setting, contenders, *, device, dtype, budget_s: float, warmup: int,
              min_rounds: int, max_rounds: int, seed: int = 0, clock: str = "wall",
              lr: float = 1e-3) -> CaseResult:
    """Median milliseconds per training step of each contender on one case."""
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    device = torch.device(device)
    num_data, batches, weights = case_inputs(setting, device, dtype, seed)
    pyro.clear_param_store()
    steps = {name: make_contender(name, setting, weights, num_data, lr, (VAE, MLPEncoder))
             for name in contenders}
    tick = time.thread_time if clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in steps}
    first: dict[str, float] = {}
    pyro.set_rng_seed(seed)
    start = None  # the budget starts after the warm-up rounds (which record and compile)
    rounds = 0
    while rounds < warmup + max_rounds:
        if rounds == warmup:
            start = time.perf_counter()
        x = batches[rounds % len(batches)]
        for name, step in steps.items():
            _sync(device)
            t0, wall0 = tick(), time.perf_counter()
            step(x)
            _sync(device)
            times[name].append(tick() - t0)
            if rounds < warmup:  # wall time: Inductor compiles C++ in child processes
                first[name] = first.get(name, 0.0) + time.perf_counter() - wall0
        rounds += 1
        if rounds >= warmup + min_rounds and time.perf_counter() - start > budget_s:
            break
    result = CaseResult(
        setting,
        {n: 1e3 * statistics.median(t[warmup:]) for n, t in times.items()},
        {n: len(t) - warmup for n, t in times.items()},
        first_s=first,
    )
    if device.type == "cuda":
        for name, step in steps.items():
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step(batches[0])
            torch.cuda.synchronize(device)
            result.peak_mib[name] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    del steps
    pyro.clear_param_store()
    gc.collect()
    return result


def merge_repeats(results: list[CaseResult]) -> CaseResult:
    """One result from repeats of a case: the median over repeats of each contender's median
    and of its warm-up seconds, and every repeat's ratio kept."""
    names = list(dict.fromkeys(n for r in results for n in r.median_ms))
    merged = CaseResult(
        results[0].setting,
        {n: statistics.median([r.median_ms[n] for r in results if n in r.median_ms]) for n in names},
        {n: sum(r.steps.get(n, 0) for r in results) for n in names},
        first_s={n: statistics.median([r.first_s[n] for r in results if n in r.first_s]) for n in names
                 if any(n in r.first_s for r in results)},
    )
    merged.peak_mib = results[0].peak_mib
    merged.ratios = {n: [r.ratio(n) for r in results if n in r.median_ms] for n in names}
    return merged


def check_sites_on_device(device, dtype) -> dict[str, str]:
    """Device of every sample site of the zoo VAE's model and guide on a batch on ``device``."""
    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE
    from ppl_vae.programs.checks import trace_pair

    x = load_data("784", torch.device(device), dtype)[:8]
    model = VAE(784).to(device, dtype)
    guide = MLPEncoder(784).to(device, dtype)
    model_trace, guide_trace = trace_pair(model, guide, (x,))
    found = {}
    for where, trace in (("model", model_trace), ("guide", guide_trace)):
        for name, site in trace.nodes.items():
            if site["type"] == "sample":
                found[f"{where}:{name}"] = str(site["value"].device)
    return found
