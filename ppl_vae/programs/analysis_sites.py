"""The data plate, per-site and per-module facts of :mod:`ppl_vae.programs.analysis`."""

from __future__ import annotations

import types
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from pyro.distributions import Unit
from pyro.poutine.util import site_is_subsample

from ppl_vae.programs.checks import data_dim
from ppl_vae.programs.handlers import PARTICLE_PLATE

__all__ = ["DataPlate", "SIZINGS", "SiteInfo", "site_infos", "program_modules"]

KINDS = ("latent", "observed", "factor", "auxiliary")
SIZINGS = ("rows", "size-less", "follows-batch", "model-subsamples", "guide-subsamples")


@dataclass(frozen=True)
class DataPlate:
    """The plate over data points and how it gets its size.

    Attributes
    ----------
    name : str
    sizing : str
        One of :data:`SIZINGS`: ``"rows"`` (``pyro.plate(name, len(x))``); ``"size-less"``
        (``pyro.plate(name)``, sized by the tensors); ``"follows-batch"`` (scvi-tools'
        ``pyro.plate(name, size=n_obs, subsample_size=x.shape[0])``: Pyro scales by
        n_obs / B, the batch is the subsample; on data of at most ``PROBE_ROWS`` rows the
        probe holds all N = n_obs rows and it reads as ``"rows"``, which it then is); ``"model-subsamples"`` (``pyro.plate(name,
        len(x), subsample_size=b)`` in the model, which indexes its data itself);
        ``"guide-subsamples"`` (AIR: the guide subsamples, the model's plate replays its
        indices).
    full_size : int
        The number of points the plate stands for in the probe trace.
    subsample_size : int or None
        The fixed subsample size ``b`` of ``"model-subsamples"`` / ``"guide-subsamples"``: a
        pass gives the programs all rows and ``b`` indices at a time.
    """

    name: str
    sizing: str
    full_size: int
    subsample_size: int | None

    @property
    def subsampled(self) -> bool:
        """A program draws indices into all rows: passes give it all rows and fixed indices."""
        return self.sizing in ("model-subsamples", "guide-subsamples")

    @property
    def indexed(self) -> bool:
        """The plate draws (unused) indices for the batch it is handed: a pass gives it the
        chunk's own row indices, so that a program using them sees the right rows."""
        return self.sizing == "follows-batch"


@dataclass(frozen=True)
class SiteInfo:
    """One sample site of the model or the guide, as the probe trace shows it.

    Attributes
    ----------
    name : str
    program : str
        ``"model"`` or ``"guide"``.
    kind : str
        ``"latent"``, ``"observed"``, ``"factor"`` (``pyro.factor``: an observed ``Unit``) or
        ``"auxiliary"`` (an autoguide's ``<site>_unconstrained``).
    local : bool
        Inside the data plate (one value per data point), else global.
    data_dim : int or None
        The data plate's dimension in the site's batch shape (negative), None for a global.
    event_dim : int
        Dimensions of one value of the site (its distribution's event shape).
    enumerated : bool
        Marked for enumeration (``infer={"enumerate": ...}``, ``config_enumerate``).
    plate_scale : float
        Pyro's own factor for subsampled plates (full size / subsample size, product over the
        site's plates) in the probe trace: n_obs / B for scvi-tools' cells plate.
    program_scale : float
        The rest of the site's scale: the program's own ``poutine.scale`` (1 when none).
        ppl-vae's N / B for mini-batches is neither (it is put around the programs in training).
    """

    name: str
    program: str
    kind: str
    local: bool
    data_dim: int | None
    event_dim: int
    enumerated: bool
    plate_scale: float
    program_scale: float


def _kind(site) -> str:
    if site["is_observed"]:
        return "factor" if isinstance(site["fn"], Unit) else "observed"
    return "auxiliary" if site["infer"].get("is_auxiliary") else "latent"


def _plate_scale(site) -> float:
    factor = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size not in (None, -1, 0) and frame.full_size > 0:
            factor *= frame.full_size / frame.size
    return factor


def site_infos(trace, program: str, plate: str) -> tuple[SiteInfo, ...]:
    """:class:`SiteInfo` of every sample site of ``trace`` (index sites of plates excluded)."""
    out = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or name == PARTICLE_PLATE:
            continue
        dim = data_dim(site, plate)
        plate_scale = _plate_scale(site)
        scale = float(site["scale"]) if not isinstance(site["scale"], torch.Tensor) or \
            site["scale"].numel() == 1 else float("nan")
        out.append(SiteInfo(name, program, _kind(site), dim is not None, dim,
                            len(site["fn"].event_shape), site["infer"].get("enumerate") is not None,
                            plate_scale, scale / plate_scale))
    return tuple(out)


def _beside(program) -> list:
    """Modules a program holds: itself, the object of a bound method, the modules in its
    closure and in the globals it names."""
    if isinstance(program, types.MethodType):
        return [program.__self__, *_beside(program.__func__)]
    if not isinstance(program, types.FunctionType):
        return [program]
    cells = [cell.cell_contents for cell in program.__closure__ or ()]
    named = [program.__globals__.get(name) for name in program.__code__.co_names]
    return cells + named


def program_modules(programs: Iterable, params: Iterable[torch.Tensor]
                    ) -> tuple[torch.nn.Module, ...]:
    """The user's modules: programs that are modules and the objects of bound-method programs
    (always), and the modules in their closures or globals whose parameters the programs
    registered (``pyro.module``, ``PyroModule``), each once."""
    ids = {id(p) for p in params}
    found: list[torch.nn.Module] = []
    for program in programs:
        own = program.__self__ if isinstance(program, types.MethodType) else program
        for module in _beside(program):
            if not isinstance(module, torch.nn.Module) or any(module is m for m in found):
                continue
            if module is own or any(id(p) in ids for p in module.parameters()):
                found.append(module)
    return tuple(found)
