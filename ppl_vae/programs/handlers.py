"""Effect handlers ppl-vae puts around user programs."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro.poutine.messenger import Messenger

from ppl_vae.compat import Subsample
from ppl_vae.programs.plates import frame_full_size

__all__ = ["DataPlateScale", "FixSubsample", "PARTICLE_PLATE", "ScaledProgram", "in_draw_plate"]

PARTICLE_PLATE = "_ppl_vae_draws"


class DataPlateScale(Messenger):
    """Scale every site inside the plate ``plate_name`` by ``num_data / plate size``.

    A mini-batch ELBO is unbiased for the whole data set only if the terms of local sites (inside
    the data plate) are multiplied by N / B while global sites are left alone. Users write
    ``pyro.plate("data", x.shape[0])`` with the batch they are given; this handler supplies the
    missing factor. The plate's size is the one the trace records, however the plate got it: a
    size-less ``pyro.plate("data")`` records -1 and leaves the size to the tensors, so it is read
    off the site (:func:`~ppl_vae.programs.plates.frame_full_size`). A plate the program
    subsamples itself (``size=M, subsample_size=b``) is already scaled by Pyro by M / b, so only
    N / M is added: 1 when it declares the whole data set (M = N), N / B when it subsamples the
    batch it is given (M = B).

    Applied to both model and guide, so ``TraceMeanField_ELBO`` sees equal scales on both sides.
    """

    def __init__(self, num_data: int, plate_name: str = "data"):
        super().__init__()
        self.num_data = int(num_data)
        self.plate_name = plate_name

    def _process_message(self, msg):
        if msg["type"] != "sample":
            return
        for frame in msg["cond_indep_stack"]:
            if frame.name != self.plate_name:
                continue
            msg["scale"] = msg["scale"] * (self.num_data / frame_full_size(frame, msg))
            return


class ScaledProgram(torch.nn.Module):
    """A Pyro program with its data-plate sites scaled by N / batch size.

    A ``torch.nn.Module`` so that ``elbo(model, guide)`` (Pyro's ``ELBOModule``) owns the
    programs' parameters, which is what data-parallel engines all-reduce.
    """

    def __init__(self, program: Callable, num_data: int, plate_name: str):
        super().__init__()
        self.program = program
        self.scale = DataPlateScale(num_data, plate_name)

    def forward(self, *batch):
        with self.scale:
            return self.program(*batch)


def in_draw_plate(fn: Callable, num: int, rank: int) -> Callable:
    """``fn`` run inside a plate of ``num`` draws at dimension ``-rank`` (left of every plate the
    program uses), so that one pass draws all of them."""

    def wrapped(*args):
        with pyro.plate(PARTICLE_PLATE, num, dim=-rank):
            return fn(*args)

    return wrapped


class FixSubsample(Messenger):
    """Give a plate that subsamples itself (``pyro.plate(name, N, subsample_size=B)``) the
    indices ``indices`` instead of a random subsample, so that a pass over chunks of indices
    covers each of its N points once. Pyro's plate takes its subsample size from the indices."""

    def __init__(self, plate: str, indices: torch.Tensor):
        super().__init__()
        self.plate, self.indices = plate, indices

    def _pyro_sample(self, msg):
        if msg["name"] == self.plate and isinstance(msg["fn"], Subsample):
            msg["value"] = self.indices.to(msg["fn"].device)
            msg["done"] = True
