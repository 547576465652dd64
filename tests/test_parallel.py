"""The public data-parallel engine: its setup returns what it wraps and overwrites nothing."""

from __future__ import annotations

import pytest
import torch

from ppl_vae.parallel.engine import Engine, make_fabric, wants_engine


class _FakeFabric:
    """Stands in for a launched Fabric of rank 1 of 2: ``setup`` wraps in new objects."""

    global_rank, world_size, local_rank, device = 1, 2, 1, torch.device("cpu")

    def setup(self, module, optimizer):
        return torch.nn.Sequential(module), ("wrapped", optimizer)


def test_setup_returns_the_wrapped_pair_and_leaves_the_state_as_it_was():
    from ppl_vae.train.distributed import setup_state
    from ppl_vae.train.state import TrainState

    module = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(module.parameters())
    engine = Engine(_FakeFabric())
    assert (engine.rank, engine.world_size, engine.is_main) == (1, 2, False)
    wrapped, wrapped_opt = engine.setup(module, optimizer)
    assert wrapped[0] is module and wrapped_opt == ("wrapped", optimizer)

    state = TrainState(loss_fn=module, optimizer=optimizer, params=list(module.parameters()))
    new = setup_state(engine, state)
    assert new is not state and new.loss_fn is not module and new.fused is None
    assert state.loss_fn is module and state.optimizer is optimizer  # not overwritten


def test_wants_engine_and_make_fabric_refusals():
    assert not wants_engine(None, None, None) and wants_engine("auto", None, 1)
    pytest.importorskip("lightning_fabric")
    with pytest.raises(ValueError, match="data-parallel runs support"):
        make_fabric(2, None, 1, "meta")
