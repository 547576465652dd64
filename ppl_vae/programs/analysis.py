"""One analysis of a (model, guide) pair on a data signature, read off traces of the programs.

Everything that plans a pass over data points (``fit``'s pre-flight, ``evaluate``,
``to_arviz``, the diagnostics, the report) reads :class:`ProgramAnalysis` instead of guessing
the programs' structure by running them until something does not fail. It is built from two
traces of each program:

1. the guide, then the model replayed on it, on a probe of the data (its first ``PROBE_ROWS``
   rows, or all rows where a parameter has one row per data point or an autoguide has not been
   set up yet): the plates, how the data plate gets its size, the sites, their scales, the
   enumerated and factor sites, the parameters and modules;
2. the same pair inside an extra plate of two draws, left of every plate the programs use: the
   draws vectorize when every site carries that dimension where it should and keeps the
   shapes of the first trace (see :func:`_vectorize_verdict`).

The analysis is cached per (model, guide, data signature, data plate): shapes, dtypes and
devices of the tensors, not their values. Programs are impure Python; what is cached is their
structure on data of that signature, which is what a pass is planned from.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro
import torch
from pyro.infer.autoguide import AutoGuide

from ppl_vae.compat import Subsample
from ppl_vae.programs.analysis_sites import (
    SIZINGS,
    DataPlate,
    SiteInfo,
    program_modules,
    site_infos,
)
from ppl_vae.programs.analysis_vectorize import vectorize_verdict
from ppl_vae.programs.checks import trace_pair
from ppl_vae.programs.handlers import PARTICLE_PLATE
from ppl_vae.programs.plates import choose_data_plate, program_plates

__all__ = ["DataPlate", "ProgramAnalysis", "SiteInfo", "analyze_programs", "clear_cache",
           "PROBE_ROWS", "SIZINGS"]

# Rows of the probe trace: enough that an inner plate rarely has the data's size by chance,
# few enough to cost one small trace.
PROBE_ROWS = 256
CACHE_SIZE = 16


@dataclass(frozen=True)
class ProgramAnalysis:
    """What ppl-vae knows about a (model, guide) pair on data of one signature.

    Attributes
    ----------
    data_plate : DataPlate
    num_points : int
        N, the data points a pass covers (the data plate's full size when a program subsamples
        it, else the data's rows).
    probe_rows : int
        Rows of the probe trace (all N where ``per_row_params`` or an unset autoguide need it).
    nesting : int
        The deepest plate dimension either program uses (positive), as Pyro's
        ``max_plate_nesting``.
    sites : tuple of SiteInfo
        Every sample site of the guide, then of the model (plates' index sites excluded).
    vectorizes : bool
        Whether K draws can be taken in one pass inside a plate of draws left of the programs'
        plates; else one pass per draw (``Predictive(parallel=False)``).
    vectorize_reason : str or None
        Why they do not (the shape found, or the error the program raised inside the plate).
    modules : tuple of torch.nn.Module
        The user's modules: the programs themselves, the objects of bound-method programs, and
        the modules their parameters (``pyro.module`` / ``PyroModule`` registrations) come from.
    per_row_params : tuple of str
        ``pyro.param`` sites whose leading dimension is N: one row per data point.
    program_runs : int
        How many times a program was run to build this analysis.
    """

    data_plate: DataPlate
    num_points: int
    probe_rows: int
    nesting: int
    sites: tuple[SiteInfo, ...]
    vectorizes: bool
    vectorize_reason: str | None
    modules: tuple[torch.nn.Module, ...]
    per_row_params: tuple[str, ...]
    program_runs: int

    def _names(self, program: str, **match) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites if s.program == program
                     and all(getattr(s, k) == v for k, v in match.items()))

    @property
    def model_locals(self) -> tuple[str, ...]:
        """Model latent sites inside the data plate."""
        return self._names("model", kind="latent", local=True)

    @property
    def model_globals(self) -> tuple[str, ...]:
        """Model latent sites outside the data plate."""
        return self._names("model", kind="latent", local=False)

    @property
    def guide_locals(self) -> tuple[str, ...]:
        return self._names("guide", kind="latent", local=True)

    @property
    def guide_globals(self) -> tuple[str, ...]:
        """Guide latent sites outside the data plate (drawn once, shared by every chunk)."""
        return self._names("guide", kind="latent", local=False)

    @property
    def has_global(self) -> bool:
        """The guide draws something outside the data plate (auxiliary sites included)."""
        return any(s.program == "guide" and s.kind in ("latent", "auxiliary") and not s.local
                   for s in self.sites)

    @property
    def enumerated(self) -> tuple[str, ...]:
        """Model sites marked for enumeration that the guide does not draw: summed out."""
        drawn = set(self._names("guide", kind="latent"))
        return tuple(s.name for s in self.sites if s.program == "model" and s.enumerated
                     and s.name not in drawn)

    def factors(self, program: str) -> tuple[str, ...]:
        """``pyro.factor`` sites of ``program`` (``"model"`` or ``"guide"``)."""
        return self._names(program, kind="factor")

    def site(self, program: str, name: str) -> SiteInfo:
        return next(s for s in self.sites if s.program == program and s.name == name)

    @property
    def chunk_points(self) -> int | None:
        """Points every chunk must hold: the fixed subsample size of a subsampling program, all
        N with a per-row parameter, else None (any)."""
        if self.data_plate.subsampled:
            return self.data_plate.subsample_size
        return self.num_points if self.per_row_params else None


_CACHE: dict[tuple, tuple[tuple, ProgramAnalysis]] = {}


def clear_cache() -> None:
    """Forget every analysis (tests; a program redefined under the same object)."""
    _CACHE.clear()


def _identity(program) -> tuple:
    """A key for a program that survives re-binding: ``vae.model`` is a new bound-method object
    on every attribute access, so it is keyed by its object and function."""
    if isinstance(program, types.MethodType):
        return id(program.__self__), id(program.__func__)
    return id(program), None


def _alive(program) -> Callable:
    """A weak reference to what a key's ids stand for (ids are reused after collection)."""
    target = program.__self__ if isinstance(program, types.MethodType) else program
    try:
        return weakref.ref(target)
    except TypeError:  # not weak-referenceable: keep it alive with the cache entry
        return lambda: target


def signature(tensors: Sequence[torch.Tensor]) -> tuple:
    """Shapes, dtypes and devices of the data: what the analysis depends on."""
    return tuple((tuple(t.shape), str(t.dtype), str(t.device)) for t in tensors)


def analyze_programs(model: Callable, guide: Callable, data: Sequence[torch.Tensor], *,
                     data_plate: str | None = None, num_data: int | None = None
                     ) -> ProgramAnalysis:
    """The :class:`ProgramAnalysis` of ``model`` and ``guide`` on ``data`` (cached).

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*data)``.
    data : sequence of tensors
        The rows the programs are given (all N, or a stream's head).
    data_plate : str, optional
        The user's name for the data plate; None finds it as
        :func:`~ppl_vae.programs.plates.choose_data_plate` does.
    num_data : int, optional
        N when ``data`` is a head of a larger data set (default: its rows).

    Raises
    ------
    ValueError
        Naming the program and the batch when a program fails on the probe, and the plates
        when no data plate or several can be told (see ``choose_data_plate``).
    """
    tensors = tuple(data)
    n = int(num_data) if num_data is not None else int(tensors[0].shape[0])
    key = (_identity(model), _identity(guide), signature(tensors), data_plate, n)
    hit = _CACHE.get(key)
    if hit is not None and all(ref() is not None for ref in hit[0]):
        return hit[1]
    cuda = [t.device for t in tensors if t.device.type == "cuda"][:1]
    # A query, not a draw: the random state is left as it was.
    with torch.random.fork_rng(devices=cuda), torch.no_grad(), pyro.validation_enabled(False):
        analysis = _analyze(model, guide, tensors, data_plate, n)
    _CACHE[key] = ((_alive(model), _alive(guide)), analysis)
    while len(_CACHE) > CACHE_SIZE:  # the oldest first: an analysis holds the user's modules
        del _CACHE[next(iter(_CACHE))]
    return analysis


def _probe_rows(guide, tensors, n: int) -> int:
    """All rows where a program needs them (a parameter with one row per data point already in
    the param store, or an autoguide whose first call fixes its rows), else a few."""
    rows = int(tensors[0].shape[0])
    unset = isinstance(guide, AutoGuide) and guide.prototype_trace is None
    store = pyro.get_param_store()
    per_row = any(_per_row(name, v, n) for name, v in store.items())
    if unset or per_row or rows <= PROBE_ROWS:
        return rows
    return PROBE_ROWS


def _analyze(model, guide, tensors, data_plate, n) -> ProgramAnalysis:
    rows = _probe_rows(guide, tensors, n)
    probe = tuple(t[:rows] for t in tensors)
    model_trace, guide_trace = trace_pair(model, guide, probe)
    plates = program_plates(model_trace, guide_trace)
    name = choose_data_plate(plates, rows, data_plate, num_data=n)
    plate = _data_plate(name, model_trace, guide_trace, rows, n)
    nesting = _nesting(model_trace, guide_trace)
    sites = site_infos(guide_trace, "guide", name) + site_infos(model_trace, "model", name)
    num_points = plate.full_size if plate.subsampled else n
    params = _param_sites(model_trace, guide_trace)
    per_row = tuple(p for p, v in params.items() if _per_row(p, v, num_points))
    enumerated = any(s.enumerated for s in sites if s.program == "model")
    vectorizes, reason, runs = vectorize_verdict(model, guide, probe, plate, nesting,
                                                  enumerated, model_trace, guide_trace)
    modules = program_modules((model, guide), params.values())
    return ProgramAnalysis(plate, num_points, rows, nesting, sites, vectorizes, reason, modules,
                           per_row, program_runs=2 + runs)


def _per_row(name: str, value: torch.Tensor, n: int) -> bool:
    """A parameter with one row per data point: leading dimension N, and not a network weight
    registered by ``pyro.module`` (``"<module>$$$<param>"``), whose rows are units."""
    return "$$$" not in name and value.dim() >= 1 and value.shape[0] == n


def _subsample_fn(trace, name) -> Subsample | None:
    site = trace.nodes.get(name)
    if site is None or site["type"] != "sample" or not isinstance(site["fn"], Subsample):
        return None
    return site["fn"]


def _data_plate(name, model_trace, guide_trace, rows, n) -> DataPlate:
    """How the plate ``name`` gets its size, from its index sites in both traces."""
    model_fn, guide_fn = _subsample_fn(model_trace, name), _subsample_fn(guide_trace, name)

    def full(fn) -> int:  # a plate sized by the rows it is given stands for all N of them
        return n if int(fn.size) == rows else int(fn.size)

    if guide_fn is not None and guide_fn.subsample_size not in (None, guide_fn.size) and (
            model_fn is None or model_fn.subsample_size in (None, model_fn.size)):
        return DataPlate(name, "guide-subsamples", full(guide_fn), int(guide_fn.subsample_size))
    fn = model_fn or guide_fn
    if fn is None:
        return DataPlate(name, "size-less", n, None)
    size, sub = int(fn.size), fn.subsample_size
    if sub in (None, size):
        return DataPlate(name, "rows", n, None)
    if int(sub) == rows and size != rows:
        return DataPlate(name, "follows-batch", size, None)
    return DataPlate(name, "model-subsamples", full(fn), int(sub))


def _nesting(*traces) -> int:
    depth = 0
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "sample":
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized and frame.name != PARTICLE_PLATE:
                        depth = max(depth, -frame.dim)
    return depth


def _param_sites(*traces) -> dict[str, torch.Tensor]:
    """``pyro.param`` sites of the traces (constrained values), by name."""
    return {name: site["value"] for trace in traces for name, site in trace.nodes.items()
            if site["type"] == "param"}
