"""Which plate is the plate over data points, read off one run of the programs.

The mini-batch ELBO is unbiased for the whole data set only if the sites of the plate over data
points are scaled by N / B (see :class:`~ppl_vae.programs.handlers.DataPlateScale`). Users name
that plate as they like (``"data"``, ``"sequences"``, ``"documents"``) and size it in several
ways (``pyro.plate("data", len(x))``, a size-less ``pyro.plate("data")`` whose size Pyro leaves
to the tensors, ``pyro.plate("data", len(x), subsample_size=b)``), so both the name and the size
are read off a trace of the programs on a batch instead of being assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pyro.poutine.util import site_is_subsample

__all__ = ["PlateInfo", "site_plate_size", "frame_full_size", "own_scale", "program_plates",
           "choose_data_plate", "observed_outside"]


def site_plate_size(site, dim: int | None) -> int:
    """The size of the site's batch shape along the plate dimension ``dim``.

    For a size-less ``pyro.plate(name)`` Pyro records size -1 in the frame and leaves the size to
    the tensors, so it is read here off the site's distribution (its batch shape, broadcast with
    the observed value's for an observed site). Only what is known when a handler processes the
    site is used (a latent's value is drawn or replayed later), so this is the size
    :class:`~ppl_vae.programs.handlers.DataPlateScale` sees as well. 1 when the site broadcasts
    along ``dim``.
    """
    if dim is None:
        return 1
    fn = site["fn"]
    shape = torch.Size(fn.batch_shape)
    value = site["value"]
    if site["is_observed"] and isinstance(value, torch.Tensor):
        event = len(fn.event_shape)
        if value.dim() >= event:
            try:
                shape = torch.broadcast_shapes(shape, value.shape[: value.dim() - event])
            except RuntimeError:
                pass  # Pyro reports the mismatch when it scores the site
    return int(shape[dim]) if len(shape) >= -dim else 1


def frame_full_size(frame, site) -> int:
    """The number of data points a plate frame stands for at this site.

    ``full_size`` for a plate the user subsamples (Pyro already scales it by full_size / size),
    the frame's size for an ordinary plate, and the size read off the site for a size-less one.
    """
    full = frame.full_size if frame.full_size is not None else frame.size
    if full is None or full < 0:
        return site_plate_size(site, frame.dim)
    return int(full)


def own_scale(site):
    """The scale a site carries from the program itself (``poutine.scale``, scANVI's
    1 / (batch x genes)): its recorded scale without the full_size / size factor of each plate
    the program subsamples, which Pyro adds for the subsample and which stands for the
    points not drawn. A float, or a tensor broadcastable with the site's log-density."""
    scale = site["scale"]
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size and frame.size > 0:
            scale = scale * (frame.size / frame.full_size)
    return scale


@dataclass
class PlateInfo:
    """One plate as the programs use it: its sizes (rows per run; one, unless its sites disagree)
    and the numbers of points it stands for (``full_size``, larger when the program subsamples
    it), and whether it was declared with a size."""

    name: str
    sizes: set[int] = field(default_factory=set)
    full_sizes: set[int] = field(default_factory=set)
    sized: bool = True

    def describe(self) -> str:
        size = "/".join(map(str, sorted(self.full_sizes)))
        if self.sizes != self.full_sizes:
            size += f", subsampled to {'/'.join(map(str, sorted(self.sizes)))}"
        return f"{self.name!r} (size {size}{'' if self.sized else ', size-less'})"


def program_plates(*traces) -> dict[str, PlateInfo]:
    """The plates of the sample sites in ``traces`` by name, in order of first use."""
    plates: dict[str, PlateInfo] = {}
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            for frame in site["cond_indep_stack"]:
                info = plates.setdefault(frame.name, PlateInfo(frame.name))
                full = frame_full_size(frame, site)
                info.full_sizes.add(full)
                info.sizes.add(full if frame.size is None or frame.size < 0 else int(frame.size))
                info.sized = info.sized and frame.size is not None and frame.size >= 0
    return plates


def observed_outside(model_trace, plate: str) -> list[str]:
    """Observed sites of the model outside the plate ``plate``: with mini-batches they are not
    scaled by N / B, so they count as global terms (right for an observation of a global, wrong
    for per-point observations written outside the plate)."""
    return [
        name for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site)
        and not any(f.name == plate for f in site["cond_indep_stack"])
    ]


def _listing(plates: dict[str, PlateInfo]) -> str:
    return ", ".join(p.describe() for p in plates.values()) if plates else "none"


def _check_size(info: PlateInfo, rows: int, num_data: int | None) -> None:
    """Raise ``ValueError`` when the plate does not stand for the batch's rows."""
    ok = {rows} | ({num_data} if num_data is not None and info.sizes != info.full_sizes else set())
    if len(info.full_sizes) == 1 and info.full_sizes <= ok:
        return
    if not info.sized:
        raise ValueError(
            f"data plate {info.name!r} has no size and its sites disagree on it along the plate's "
            f"dimension ({sorted(info.full_sizes)}, batch of {rows} rows): a site that "
            f"broadcasts along it would be scaled wrongly; give the plate its size, e.g. "
            f"pyro.plate({info.name!r}, x.shape[0])"
        )
    size = "/".join(map(str, sorted(info.full_sizes)))
    raise ValueError(
        f"data plate {info.name!r} has size {size} but the batch has {rows} rows: the programs "
        f"would see {size} of every {rows} rows and the N / batch scale would be wrong; size the "
        f"plate from the data, e.g. pyro.plate({info.name!r}, x.shape[0])"
    )


def choose_data_plate(plates: dict[str, PlateInfo], rows: int, data_plate: str | None = None,
                      num_data: int | None = None) -> str:
    """The data plate among ``plates`` (from :func:`program_plates`) for a batch of ``rows``.

    See :func:`ppl_vae.programs.checks.resolve_data_plate`, which traces the programs for it.
    """
    if data_plate is not None:
        if data_plate not in plates:
            raise ValueError(
                f"data_plate={data_plate!r}: the model and guide have no plate of that name; "
                f"their plates: {_listing(plates)}. Pass one of them, or data_plate=None to use "
                f"the plate whose size is the batch's ({rows} rows)"
            )
        _check_size(plates[data_plate], rows, num_data)
        return data_plate
    candidates = [
        p for p in plates.values()
        if rows in p.full_sizes
        or (num_data is not None and p.sizes != p.full_sizes and num_data in p.full_sizes)
    ]
    if len(candidates) == 1:
        _check_size(candidates[0], rows, num_data)
        return candidates[0].name
    if not candidates:
        raise ValueError(
            f"no plate of the model or guide has the batch's size ({rows} rows), so no site "
            f"can be scaled to the whole data set; their plates: {_listing(plates)}. Put the "
            f"observations in pyro.plate('data', x.shape[0]) or pass data_plate=<name>"
        )
    raise ValueError(
        f"several plates have the batch's size ({rows} rows): "
        f"{', '.join(p.describe() for p in candidates)}; pass data_plate=<name> to say which "
        f"one runs over data points"
    )
