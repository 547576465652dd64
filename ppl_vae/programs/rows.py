"""Parameters with one row per data point, read off a trace of the programs.

A guide that is not amortized keeps one set of parameters per data point: Pyro's
``examples/sparse_gamma_def.py`` sizes its ``pyro.param``\\ s by ``x.size(0)``, an autoguide of
local latents (``AutoNormal``, ``AutoDelta``) sizes its own by the rows of its first call. Row
``i`` of such a parameter is data point ``i``'s posterior only if every step passes row ``i`` at
position ``i``: a full batch in the data's order, or a plate the program subsamples itself with
``pyro.plate("data", N, subsample_size=B) as idx`` and indexes with ``loc[idx]``. Mini-batches
cut by ``fit`` meet rows made for other points, and nothing fails: :func:`per_row_parameters`
finds such parameters so that ``fit`` can refuse them before the first step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

from ppl_vae.programs.checks import data_dim, latent_sites, trace_pair
from ppl_vae.programs.plates import choose_data_plate, program_plates
from ppl_vae.programs.util import unwrap_distribution

__all__ = ["per_row_parameters", "check_per_row_parameters"]

# Autograd nodes that pick rows out of a tensor by index: a parameter read through one of them is
# indexed by the program (``loc[idx]``), not used whole.
_INDEXING = frozenset({"IndexBackward0", "IndexSelectBackward0", "GatherBackward0",
                       "EmbeddingBackward0", "TakeBackward0"})


def _unindexed_leaves(tensor: torch.Tensor) -> set[int]:
    """The ``id``\\ s of the leaf tensors that ``tensor`` was computed from along some path of
    its autograd graph without an indexing operation."""
    found: set[int] = set()
    stack, seen = [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen or type(node).__name__ in _INDEXING:
            continue
        seen.add(node)
        if type(node).__name__ == "AccumulateGrad":  # the node of a leaf tensor
            found.add(id(node.variable))
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return found


def _row_tensors(site, plate: str):
    """The tensors of a site's distribution whose dimension along the data plate is the plate's
    (not broadcast): ``(tensor, position of the plate dimension in it, extent)``."""
    dim = data_dim(site, plate)
    if dim is None:
        return
    base, reinterpreted, _ = unwrap_distribution(site["fn"], through_mask=True)
    for name, constraint in base.arg_constraints.items():
        tensor = base.__dict__.get(name)  # only the arguments the distribution was built from
        if not isinstance(tensor, torch.Tensor) or tensor.grad_fn is None:
            continue
        # A dependent argument (Delta's value) has the value's shape: its event dims are the
        # distribution's own.
        event_dim = len(base.event_shape) if constraints.is_dependent(constraint) \
            else constraint.event_dim
        position = dim - reinterpreted - event_dim
        if tensor.dim() >= -position and tensor.shape[position] > 1:
            yield tensor, position, int(tensor.shape[position])


def _row_by_row(tensor: torch.Tensor, position: int, leaf: torch.Tensor) -> bool:
    """Whether the tensor's first entry along the data plate depends on the leaf's first row
    and on no other: the parameter's rows are the data points' (a weight matrix whose leading
    dimension happens to equal the batch size mixes all its rows into every point)."""
    (grad,) = torch.autograd.grad(tensor.select(position, 0).sum(), leaf, retain_graph=True,
                                  allow_unused=True)
    if grad is None:
        return False
    rows = grad.reshape(grad.shape[0], -1).ne(0).any(dim=1)
    return bool(rows[0]) and not bool(rows[1:].any())


def _find(model, guide, data, num_data: int | None, data_plate: str | None):
    """``(names of the per-row parameters, the data plate's name)``."""
    rows = int(data[0].shape[0])
    num_data = rows if num_data is None else int(num_data)
    cuda = [t.device for t in data if t.device.type == "cuda"][:1]
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=cuda), \
            torch.enable_grad(), pyro.validation_enabled(False):
        if isinstance(guide, AutoGuide) and guide.prototype_trace is None:
            # An autoguide's first call fixes its parameters to the rows it meets (and it cannot
            # be copied without losing its model): its latent sites in the data plate are read
            # off the model alone, the parameters it would make for them named by site.
            # Its sites are those of the model it was built on, which may block some (the GMM
            # tutorial's AutoDelta leaves the enumerated assignment to the model).
            traces = (poutine.trace(model).get_trace(*data),)
            plate = choose_data_plate(program_plates(*traces), rows, data_plate, num_data)
            seen = traces[0] if guide.model is model else \
                poutine.trace(guide.model).get_trace(*data)
            found = {f"{type(guide).__name__}'s parameters of site {name!r}": None
                     for name in latent_sites(seen)
                     if data_dim(seen.nodes[name], plate) is not None
                     and seen.nodes[name]["infer"].get("enumerate") is None}
        else:
            traces = trace_pair(model, guide, data)
            plate = choose_data_plate(program_plates(*traces), rows, data_plate, num_data)
            found = {}
        for trace in traces:
            # A program's own parameters, at its own sites: the model's sites also depend on
            # the guide's parameters through the replayed draws, which say nothing about rows.
            params = {id(site["value"].unconstrained()): (name, site["value"].unconstrained())
                      for name, site in trace.nodes.items()
                      if site["type"] == "param" and site["value"].dim() > 0}
            for site in trace.nodes.values():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                for tensor, position, extent in _row_tensors(site, plate):
                    for leaf_id in _unindexed_leaves(tensor) & params.keys():
                        name, leaf = params[leaf_id]
                        if name not in found and leaf.shape[0] == extent \
                                and _row_by_row(tensor, position, leaf):
                            found[name] = None
    return list(found), plate


def per_row_parameters(model: Callable, guide: Callable, data: Sequence[torch.Tensor], *,
                       num_data: int | None = None, data_plate: str | None = None) -> list[str]:
    """The parameters of ``model`` and ``guide`` that hold one row per data point and are used
    whole inside the data plate.

    Decided from one trace of the programs on ``data``: a parameter counts when a site of the
    data plate is computed from it without indexing (``loc[idx]`` is the program choosing its
    rows, and is fine), and the site's point ``i`` depends on the parameter's row ``i`` alone
    (checked by a gradient through the trace). The programs run in a scope of their own: the
    parameter store, the RNG and an autoguide (which fixes its parameters' shapes on its first
    call) are left as they were.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*data)``.
    data : sequence of tensors
        ``B`` rows each, as the programs get them in the first training step.
    num_data : int, optional
        ``N``, the rows of the whole data set (default ``B``).
    data_plate : str, optional
        The plate over data points (found as :func:`~ppl_vae.programs.checks.resolve_data_plate`
        finds it when None).

    Returns
    -------
    list of str
        Parameter-store names (``"alpha_z_top"``, ``"AutoNormal.locs.z"``), in trace order.
        Parameters an autoguide packs into one vector (``AutoDiagonalNormal``) are not rows;
        :func:`~ppl_vae.programs.checks.check_autoguide_batches` refuses those guides.
    """
    return _find(model, guide, data, num_data, data_plate)[0]


def check_per_row_parameters(model: Callable, guide: Callable, batch: Sequence[torch.Tensor],
                             num_data: int, data_plate: str | None = None) -> None:
    """Refuse mini-batches of ``B < num_data`` rows when the programs have parameters with one
    row per data point (:func:`per_row_parameters`), naming them and the idiom that works."""
    rows = int(batch[0].shape[0])
    if rows >= num_data:
        return
    names, plate = _find(model, guide, batch, num_data, data_plate)
    if not names:
        return
    raise ValueError(
        f"parameter(s) {names} hold one row per data point and are used whole inside the data "
        f"plate: mini-batches of {rows} of {num_data} rows would train each row on other points; "
        f"pass batch_size={num_data} (the rows in their order), or let the programs subsample "
        f"their own plate and index the parameters with its indices: "
        f"with pyro.plate({plate!r}, {num_data}, subsample_size={rows}) as idx: ... "
        f"loc[idx] ... (Pyro draws the indices and scales the sites), with batch_size={num_data}"
    )
