"""Effect handlers ppl-vae puts around user programs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.poutine.messenger import Messenger

__all__ = ["DataPlateScale", "ScaledProgram"]


class DataPlateScale(Messenger):
    """Scale every site inside the plate ``plate_name`` by ``num_data / plate size``.

    A mini-batch ELBO is unbiased for the whole data set only if the terms of local sites (inside
    the data plate) are multiplied by N / B while global sites are left alone. Users write
    ``pyro.plate("data", x.shape[0])`` with the batch they are given; this handler supplies the
    missing factor. A plate the user declared with ``size=N, subsample_size=B`` is already scaled
    by Pyro (its frame records ``full_size``), so it is left alone.

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
            if frame.full_size is None or frame.full_size == frame.size:
                msg["scale"] = msg["scale"] * (self.num_data / frame.size)
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
