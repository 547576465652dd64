"""Checks run once before training, so that bad input fails with a message naming the problem
instead of a traceback from deep inside Pyro (and instead of checking every step)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence

import pyro
import torch
from pyro import poutine
from pyro.distributions import ExpandedDistribution, Independent, MaskedDistribution
from pyro.infer.autoguide import AutoGuide
from pyro.poutine.util import site_is_subsample

from ppl_vae.compat import default_validate_args, validates_args
from ppl_vae.data.tensors import shape_hint
from ppl_vae.programs.plates import choose_data_plate, frame_full_size, program_plates

__all__ = ["trace_pair", "check_sites_agree", "check_support", "latent_sites",
           "resolve_data_plate", "check_autoguide_batches"]


def trace_pair(model: Callable, guide: Callable, batch: Sequence[torch.Tensor]):
    """Run the guide, then the model replayed on the guide's draws; return both traces.

    Errors raised by the user's program are re-raised as ``ValueError`` naming which program
    failed on which batch shape, with the original error chained.
    """
    shapes = [tuple(t.shape) for t in batch]
    with _embedding_indices_checked(0):  # rows of ``batch``: a label beyond a table, by row
        return _trace_pair(model, guide, batch, shapes)


def _trace_pair(model, guide, batch, shapes):
    try:
        guide_trace = poutine.trace(guide).get_trace(*batch)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise ValueError(f"the guide failed on a batch of shape(s) {shapes}{shape_hint(batch)}: "
                         f"{exc}") from exc
    try:
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*batch)
    except Exception as exc:  # noqa: BLE001
        _explain_shape_mismatch(model, guide_trace, batch)
        raise ValueError(f"the model failed on a batch of shape(s) {shapes}{shape_hint(batch)}: "
                         f"{exc}") from exc
    return model_trace, guide_trace


def _explain_shape_mismatch(model, guide_trace, batch) -> None:
    """The model choked on the guide's draws: if, run on its own prior draws, it works and its
    sites have other event shapes than the guide's, say so (the usual cause)."""
    try:
        prior_trace = poutine.trace(model).get_trace(*batch)
    except Exception:  # noqa: BLE001 - the model fails on its own too; keep the first error
        return
    check_event_shapes(prior_trace, guide_trace)


def check_event_shapes(model_trace, guide_trace) -> None:
    """Raise ``ValueError`` when a latent site's event shape differs between model and guide."""
    for name in latent_sites(model_trace):
        if name not in guide_trace.nodes:
            continue
        want = tuple(model_trace.nodes[name]["fn"].event_shape)
        got = tuple(guide_trace.nodes[name]["fn"].event_shape)
        if want != got:
            raise ValueError(
                f"site {name!r}: the model's distribution has event shape {want} but the guide's "
                f"has {got} (do model and guide have the same latent dimension?)"
            )


def _is_enumerated(site) -> bool:
    return site["infer"].get("enumerate") is not None


def latent_sites(trace) -> list[str]:
    """Names of the non-observed sample sites of a trace, in order."""
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def check_sites_agree(model_trace, guide_trace) -> None:
    """Raise ``ValueError`` listing the latent sites the guide misses or adds.

    Model sites marked for enumeration need no guide site.
    """
    model_latent = {
        n for n in latent_sites(model_trace) if not _is_enumerated(model_trace.nodes[n])
    }
    # Auxiliary guide sites (autoguides' "<site>_unconstrained") have no model counterpart.
    guide_latent = {
        n for n in latent_sites(guide_trace) if not guide_trace.nodes[n]["infer"].get("is_auxiliary")
    }
    missing = sorted(model_latent - guide_latent)
    extra = sorted(guide_latent - set(latent_sites(model_trace)))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing from the guide: {missing}")
        if extra:
            parts.append(f"in the guide but not in the model: {extra}")
        raise ValueError("model and guide latent sites disagree; " + "; ".join(parts))
    # A pyro.factor in the guide (an observed auxiliary site, scANVI's classifier term) is a
    # log q term Pyro's ELBOs count; whether an estimator takes it is the estimator's to say.
    observed_in_guide = [
        n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and s["is_observed"]
        and not s["infer"].get("is_auxiliary")
    ]
    if observed_in_guide:
        raise ValueError(f"the guide observes sites {observed_in_guide}; only the model may "
                         "(a guide may add a pyro.factor term)")
    check_event_shapes(model_trace, guide_trace)


def data_dim(site, plate_name: str) -> int | None:
    """The (negative) dimension of the plate ``plate_name`` in a site's batch shape, or None."""
    for frame in site["cond_indep_stack"]:
        if frame.name == plate_name and frame.dim is not None:
            return frame.dim
    return None


def resolve_data_plate(
    model: Callable,
    guide: Callable,
    batch: Sequence[torch.Tensor],
    data_plate: str | None = None,
    *,
    num_data: int | None = None,
) -> str:
    """The name of the plate over data points, checked against a batch.

    The plates are read off a trace of both programs on ``batch``
    (:func:`~ppl_vae.programs.plates.program_plates`), each with the size it has there, however
    it got it (declared, size-less and read off its sites, or subsampled by the program).

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(*batch)``; they are run once, without gradients.
    batch : sequence of tensors
        B rows each, as the programs get them in training or evaluation.
    data_plate : str, optional
        The user's name for the plate. None: the one plate (of model or guide) whose size is B.
    num_data : int, optional
        N, the rows of the whole data set: a plate the program subsamples itself may stand for N
        points (``pyro.plate(name, N, subsample_size=B)``).

    Returns
    -------
    str
        The plate's name. It stands for the batch's B rows (or for all N with subsampling).

    Raises
    ------
    ValueError
        Naming the plates the programs have, when ``data_plate`` is not one of them, when its
        size is not the batch's, or (with ``data_plate=None``) when no plate or several have the
        batch's size.
    """
    rows = int(batch[0].shape[0])
    # A query, not a draw: the RNG is left as it was, so a seeded evaluation draws the same
    # whether or not the plate had to be found first.
    cuda = [t.device for t in batch if t.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=cuda), torch.no_grad(), pyro.validation_enabled(False):
        plates = program_plates(*trace_pair(model, guide, batch))
    return choose_data_plate(plates, rows, data_plate, num_data)


def check_autoguide_batches(model: Callable, guide: Callable, batch: Sequence[torch.Tensor],
                            num_data: int, plate_name: str | None = None) -> None:
    """Refuse an autoguide for latent sites inside the data plate when training on mini-batches.

    An autoguide (``AutoNormal``, ``AutoDelta``, ...) learns one set of parameters per data
    point of the rows it is first called with; mini-batches of other rows (or another number of
    them) then meet parameters made for different points, which Pyro reports only as a shape
    mismatch or an index error deep in the program. ``batch`` is a mini-batch of ``B < num_data``
    rows; the data plate is ``plate_name``, or any plate standing for the batch's ``B`` rows.
    """
    rows = int(batch[0].shape[0])
    if not isinstance(guide, AutoGuide) or rows >= num_data:
        return
    with torch.random.fork_rng(), torch.no_grad(), pyro.validation_enabled(False):
        trace = poutine.trace(model).get_trace(*batch)
    local = [name for name in latent_sites(trace) if not _is_enumerated(trace.nodes[name]) and any(
        frame.name == plate_name if plate_name is not None else
        frame_full_size(frame, trace.nodes[name]) == rows
        for frame in trace.nodes[name]["cond_indep_stack"])]
    if local:
        raise ValueError(
            f"the guide is an autoguide ({type(guide).__name__}) and the model's latent site(s) "
            f"{local} lie in the plate over data points: an autoguide learns parameters for "
            f"the rows it first sees, not for mini-batches of {rows} of {num_data} rows; use an "
            "amortized guide (an encoder network) for them, or batch_size equal to the number "
            "of rows")


def _base(fn):
    """The distribution that scores: wrappers (``.to_event``, ``.mask``, ``.expand``) score
    through their base distribution, which also does the support checking."""
    while isinstance(fn, (Independent, MaskedDistribution, ExpandedDistribution)):
        fn = fn.base_dist
    return fn


def check_support(
    model: Callable,
    guide: Callable,
    tensors: Sequence[torch.Tensor],
    *,
    batch_size: int,
    plate_name: str | None = None,
    max_rows: int = 10,
) -> None:
    """Check every observed value against its likelihood's support, over the whole data set.

    Rows are reported as indices into ``tensors`` along the plate ``plate_name`` (found as
    :func:`resolve_data_plate` does when None), all chunks of ``batch_size`` rows together.

    A likelihood built with ``validate_args=False`` is skipped: that is how Pyro users say that
    values outside the support are meant (Pyro's VAE example scores [0, 1] grey levels with a
    ``Bernoulli``, a soft cross-entropy), and Pyro itself then scores them without complaint.
    With validation switched off globally (``pyro.enable_validation(False)``, usually for speed)
    no distribution says so, and a soft target cannot be told from a bug (0..255 pixels in a
    Bernoulli), so the same finding is a warning instead of an error.
    """
    n = tensors[0].shape[0]
    # The programs run under the user's validation setting, so that each distribution's own
    # validate_args is what the user wrote; nothing is scored here, so Pyro raises nothing.
    globally_on = default_validate_args()
    found: dict[str, tuple] = {}  # site -> (distribution, bad rows or None when unknown)
    observed = False
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = tuple(t[start : start + batch_size] for t in tensors)
            with _embedding_indices_checked(start):
                model_trace, _ = trace_pair(model, guide, batch)
            for name, site in model_trace.nodes.items():
                if site["type"] != "sample" or not site["is_observed"]:
                    continue
                observed = True
                base = _base(site["fn"])
                if globally_on and not validates_args(base):
                    continue
                ok = site["fn"].support.check(site["value"])
                if bool(ok.all()):
                    continue
                if plate_name is None:
                    plate_name = _plate_or_none(model, guide, batch)
                rows = _bad_rows(site, ok, plate_name)
                _, before = found.get(name, (base, []))
                found[name] = (base, None if rows is None or before is None
                               else before + [r + start for r in rows])
    if not observed:
        warnings.warn("the model has no observed site (no pyro.sample(..., obs=...) or "
                      "pyro.factor): the data never enter the ELBO, so training fits the prior, "
                      "not a posterior; pass the data to a likelihood as obs=", stacklevel=3)
    for name, (base, rows) in found.items():
        message = _support_message(name, base, rows, max_rows)
        if globally_on:
            raise ValueError(message)
        warnings.warn(message + " (Pyro validation is off, so they are scored as they are)",
                      stacklevel=3)


def _plate_or_none(model, guide, batch) -> str | None:
    try:
        return resolve_data_plate(model, guide, batch)
    except ValueError:
        return None  # rows cannot be named; the site still is


def _bad_rows(site, ok, plate_name) -> list[int] | None:
    dim = data_dim(site, plate_name) if plate_name is not None else None
    if dim is None or ok.dim() < -dim:
        return None
    bad = ~ok.movedim(dim, 0).reshape(ok.shape[dim], -1).all(dim=1)
    return torch.nonzero(bad).flatten().tolist()


def _support_message(name, base, rows, max_rows) -> str:
    what = f"{type(base).__name__} ({base.support})"
    if rows is None:
        return f"observed site {name!r}: values lie outside the support of {what}"
    shown = ", ".join(map(str, rows[:max_rows])) + (" ..." if len(rows) > max_rows else "")
    return (f"observed site {name!r}: {len(rows)} row(s) lie outside the support of its "
            f"likelihood {what}: rows {shown}; if that is meant (soft targets), build it with "
            f"validate_args=False")


@contextlib.contextmanager
def _embedding_indices_checked(start: int):
    """While the programs run on rows ``start, ...``: an ``nn.Embedding`` given an index outside
    its table (a label beyond the number of classes) is a ``ValueError`` naming the data row and
    the value, not torch's "index out of range in self"."""

    def check(module, args):
        if not isinstance(module, torch.nn.Embedding) or not args:
            return
        index = args[0]
        bad = (index < 0) | (index >= module.num_embeddings)
        if bool(bad.any()):
            where = torch.nonzero(bad)[0]
            row = f"row {start + int(where[0])}" if index.dim() else "a scalar index"
            raise ValueError(f"{row} holds index {int(index[tuple(where)])}, outside "
                             f"nn.Embedding({module.num_embeddings}, ...), whose indices lie in "
                             f"[0, {module.num_embeddings}): a label beyond the embedding's size")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()
