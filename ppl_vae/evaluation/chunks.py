"""Passes over data points in chunks: what ``evaluate``, ``to_arviz`` and the diagnostics share.

Memory is bounded by one chunk (K draws x chunk points x the programs' widths), not by N. The
draws of a chunk are seeded from (seed, chunk's first index), so a point draws the same
numbers whichever process or pass computes it; chunk boundaries depend only on N, K and the
data's width, never on the number of processes. Global latents are drawn once and replayed in
every chunk, so all points share the same global draws, as in one pass over all data.

The plan is read off the programs' analysis (:mod:`ppl_vae.programs.analysis`), never found
by trying. Programs that need more than slicing rows:

- a model that subsamples its own data plate (``pyro.plate("data", N, subsample_size=B)``), or
  a guide that does and a model that replays its indices (AIR), gets all rows and the chunk's
  indices as its subsample (``FixSubsample``), so each of its N points is scored once;
- a plate that subsamples the batch it is handed (scvi-tools' ``size=n_obs,
  subsample_size=x.shape[0]``) gets the chunk's rows and their own indices;
- a program that cannot broadcast over an extra draw dimension (``x @ w`` on a sampled ``w``,
  ``loc[mask]``) is drawn one draw at a time, as ``Predictive(parallel=False)`` does;
- a model with enumerated sites has them summed out, as ``TraceEnum_ELBO`` does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ppl_vae.evaluation.pointwise import Draws, draw
from ppl_vae.programs.analysis import ProgramAnalysis, analyze_programs
from ppl_vae.programs.random import chunk_seed, seeded

__all__ = ["draws_vectorize", "ELEMENT_BUDGET", "PointPlan", "chunk_draws", "global_draws",
           "map_chunks", "plan_from", "plan_points", "release_memory"]

ELEMENT_BUDGET = 2**23  # K x chunk x row width elements per drawn tensor (32 MiB in float32)
MAX_POINT_ELEMENTS = 2**28  # K x row width of one point, the smallest chunk (1 GiB in float32)


@dataclass(frozen=True)
class PointPlan:
    """How to walk over the data points of a pair of programs.

    Attributes
    ----------
    num_points : int
        N, the data points (the plate's full size for a model that subsamples itself).
    nesting : int
        The programs' max plate nesting.
    vectorized : bool
        Whether K draws fit in one pass (a particle plate); else one pass per draw.
    subsampled : bool
        The model subsamples ``data_plate`` itself: chunks give it all rows and fixed indices.
    chunk_size : int
        Points per chunk (N when the programs only run on the whole data set; the plate's own
        subsample size B for a model that subsamples itself, since Pyro requires B indices:
        the last chunk is padded with the first points, which are then dropped).
    data_plate : str
    has_global : bool
        The guide has sites outside the data plate (drawn once, replayed in every chunk).
    indexed : bool
        The plate draws indices for the batch it is handed (scvi-tools' ``size=n_obs,
        subsample_size=x.shape[0]``): each chunk gives it its own rows' indices.
    enumerated : bool
        The model has enumerated sites the guide does not draw: summed out in every pass.
    fixed_points : bool
        The programs fix a chunk's points (a subsampling plate's b indices, all N with a
        parameter per data point): a pass on fewer points takes a whole chunk, not a slice.
    """

    num_points: int
    nesting: int
    vectorized: bool
    subsampled: bool
    chunk_size: int
    data_plate: str
    has_global: bool
    indexed: bool = False
    enumerated: bool = False
    fixed_points: bool = False

    def starts(self) -> list[int]:
        return list(range(0, self.num_points, self.chunk_size))

    def stop(self, start: int) -> int:
        return min(start + self.chunk_size, self.num_points)

    def chunk(self, tensors: Sequence[torch.Tensor], start: int, positions=None):
        """(batch, subsample) for the points ``start + positions`` (the whole chunk by default;
        a self-subsampling model always gets its whole chunk, padded to B indices)."""
        stop = self.stop(start)
        ref = tensors[0]
        if self.subsampled:
            pad = self.chunk_size - (stop - start)
            index = torch.cat([torch.arange(start, stop), torch.arange(pad)])
            return tuple(tensors), index.to(ref.device)
        if positions is None:
            index = torch.arange(start, stop, device=ref.device)
            return tuple(t[start:stop] for t in tensors), index if self.indexed else None
        index = torch.as_tensor(positions, dtype=torch.long, device=ref.device) + start
        return tuple(t[index] for t in tensors), index if self.indexed else None

    def first_points(self, tensors: Sequence[torch.Tensor], count: int):
        """(batch, subsample) of the first ``count`` points, or of the whole first chunk where
        the programs fix a chunk's points."""
        positions = None if self.fixed_points else range(min(count, self.num_points))
        return self.chunk(tensors, 0, positions)

    def draw_options(self) -> dict:
        """``draw``'s keyword arguments that this plan fixes."""
        return dict(data_plate=self.data_plate, nesting=self.nesting, vectorized=self.vectorized,
                    enumerate_model=self.enumerated)


def plan_points(model: Callable, guide: Callable, tensors: Sequence[torch.Tensor], *,
                num_draws: int, data_plate: str | None = None,
                chunk_size: int | None = None, draws_argument: str = "num_samples") -> PointPlan:
    """How to walk over the points of ``tensors``, from the programs' analysis
    (:func:`~ppl_vae.programs.analysis.analyze_programs`, which finds the data plate as ``fit``
    does when ``data_plate`` is None; the random state is left as it was).
    ``draws_argument``: the caller's name for ``num_draws``, for the error when one point's
    draws cannot fit."""
    check_draws_fit(tensors, num_draws, draws_argument)
    analysis = analyze_programs(model, guide, tensors, data_plate=data_plate)
    return plan_from(analysis, tensors, num_draws, chunk_size)


def plan_from(analysis: ProgramAnalysis, tensors: Sequence[torch.Tensor], num_draws: int,
              chunk_size: int | None = None) -> PointPlan:
    """The :class:`PointPlan` of an analysis: chunks of ``chunk_size`` points (by default as
    many as keep one drawn tensor near :data:`ELEMENT_BUDGET` elements), except where the
    programs fix a chunk's points (a subsampling plate's b indices, all N with a parameter per
    data point)."""
    plate = analysis.data_plate
    fixed = analysis.chunk_points
    if fixed is not None:
        chunk_size = fixed
    elif chunk_size is None:
        width = max(1, sum(t[0].numel() for t in tensors))
        chunk_size = max(1, ELEMENT_BUDGET // (int(num_draws) * width))
    n = analysis.num_points
    return PointPlan(int(n), analysis.nesting, analysis.vectorizes, plate.subsampled,
                     int(min(max(1, chunk_size), n)), plate.name, analysis.has_global,
                     indexed=plate.indexed and plate.full_size == n,
                     enumerated=bool(analysis.enumerated), fixed_points=fixed is not None)


def check_draws_fit(tensors, num_draws: int, argument: str = "num_samples") -> None:
    """Chunks split the points, not the draws: one point's K draws must fit at once."""
    width = max(1, sum(t[0].numel() for t in tensors))
    if int(num_draws) * width <= MAX_POINT_ELEMENTS:
        return
    size = int(num_draws) * width * tensors[0].element_size() / 2**30
    raise ValueError(
        f"{argument}={int(num_draws):,}: the draws of a single data point would hold "
        f"{int(num_draws) * width:,} values ({size:.1f} GiB in {tensors[0].dtype}); use at most "
        f"{MAX_POINT_ELEMENTS // width:,} draws for rows of {width} values")


def draws_vectorize(model, guide, batch, data_plate: str | None = None) -> bool:
    """Whether the programs' draws vectorize over a plate of draws on data like ``batch``
    (else :func:`~ppl_vae.evaluation.pointwise.draw` must be called with
    ``vectorized=False``): the analysis' verdict."""
    return analyze_programs(model, guide, batch, data_plate=data_plate).vectorizes


def global_draws(plan: PointPlan, model, guide, tensors, *, num_draws: int,
                 seed: int | None, key=0) -> list | None:
    """The guide's global draws, made once (on the first chunk) and replayed by every chunk."""
    if not plan.has_global:
        return None
    batch, subsample = plan.chunk(tensors, 0)
    with seeded(chunk_seed(seed, "globals", key)):
        return draw(model, guide, batch, num_samples=num_draws, subsample=subsample,
                    num_points=plan.num_points, **plan.draw_options()).global_traces


def chunk_draws(plan: PointPlan, model, guide, tensors, start: int, *, num_draws: int,
                seed: int | None, globals_=None, key=0) -> Draws:
    """K draws on the chunk beginning at ``start``, seeded from (seed, key, start)."""
    batch, subsample = plan.chunk(tensors, start)
    with seeded(chunk_seed(seed, "points", key, start)):
        d = draw(model, guide, batch, num_samples=num_draws, subsample=subsample,
                 globals_=globals_, num_points=plan.num_points, **plan.draw_options())
    valid = plan.stop(start) - start
    if d.log_lik.shape[1] != valid:  # the padding of a self-subsampling model's last chunk
        d = d.take(torch.arange(valid, device=d.log_lik.device))
    return d


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` on other C libraries (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


#: Chunks between two ``malloc_trim`` calls (:func:`release_memory`).
TRIM_EVERY = 16


def release_memory(full: bool = False, trim: bool = True) -> None:
    """Free what a finished chunk left behind, and give it back to the operating system.

    Pyro's traces hold their tensors in reference cycles, freed only by the cyclic collector,
    which runs by object counts, not bytes: the young generations are collected after each
    chunk (all of them with ``full``), or dead chunks pile up (12 GB at 60,000 MNIST rows
    without it). Then glibc keeps the freed blocks in its heap, fragmented by the few live
    objects each chunk leaves (its per-point results): the resident size of a simulation-based
    calibration at 60,000 784-dim rows still grew to 4.2 GB, and to 24 GB inside ``diagnose``,
    with nothing alive. ``malloc_trim(0)`` returns the free pages: 0.8 GB at the end. Not after
    every chunk (``trim=False``): the next chunk then faults the same pages in again, zeroed
    by the kernel (15 ms of a 90 ms chunk of 53 784-dim points x 200 draws); every
    :data:`TRIM_EVERY` chunks bounds what piles up to that many chunks' worth.
    """
    gc.collect(2 if full else 1)
    release = _malloc_trim() if trim or full else None
    if release is not None:
        release(0)


def map_chunks(fn: Callable[[int], object], starts: Sequence[int], *, engine=None,
               desc: str | None = None, progress: bool | None = None) -> list:
    """``[fn(start) for start in starts]``, sharded over the processes of ``engine``.

    Parameters
    ----------
    engine : ppl_vae.parallel.engine.Engine, optional
        Each process maps the chunks ``starts[rank::world_size]``; the results are gathered
        to every process, in the order of ``starts``.
    desc : str, optional
        Label of the progress bar.
    progress : bool, optional
        ``None`` shows a bar on a terminal only (tqdm's rule), ``False`` never.
    """
    rank, world = (0, 1) if engine is None else (engine.rank, engine.world_size)
    mine = list(starts)[rank::world]
    bar = tqdm(total=len(mine), desc=desc, disable=None if progress is None else not progress,
               leave=False, unit="chunk")
    out = []
    with bar:
        for start in mine:
            out.append(fn(start))
            release_memory(full=not len(out) % 64, trim=not len(out) % TRIM_EVERY)
            bar.update(1)
    if world == 1:
        return out
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, out)
    merged = [None] * len(starts)
    for r, part in enumerate(gathered):
        merged[r::world] = part
    return merged
