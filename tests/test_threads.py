"""``ppl_vae.train.threads``: intra-op threads sized to the step, restored after training."""

import pytest
import torch

import ppl_vae
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE
from ppl_vae.train import threads as threads_module
from ppl_vae.train.threads import WORK_PER_THREAD, choose_threads, intra_op_threads


@pytest.fixture
def four_idle_cores(monkeypatch):
    monkeypatch.setattr(threads_module, "_idle_cores", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_small_steps_get_one_thread_large_ones_more(four_idle_cores):
    digits_vae = [torch.empty(75_000)]  # the digits VAE: ~75k weights
    assert choose_threads(digits_vae, 128) == 1
    big = [torch.empty(650_000)]  # the 784-dim VAE
    assert choose_threads(big, 128) == 1
    assert choose_threads(big, 1024) == 650_000 * 1024 // WORK_PER_THREAD == 4
    assert choose_threads(big, 100_000) == 4  # never more than the cap and the idle cores


def test_busy_cores_and_explicit_choices(monkeypatch, four_idle_cores):
    monkeypatch.setattr(threads_module, "_idle_cores", lambda: 1)  # a loaded machine
    assert choose_threads([torch.empty(650_000)], 100_000) == 1
    assert choose_threads([torch.empty(10)], 1, 3) == 3
    assert choose_threads([torch.empty(10)], 1, None) is None
    assert choose_threads([torch.empty(10, device="meta")], 1) is None  # not on the CPU
    with pytest.raises(ValueError, match="threads must be"):
        choose_threads([torch.empty(10)], 1, 0)
    with pytest.raises(TypeError, match="threads must be"):
        choose_threads([torch.empty(10)], 1, "fast")


def test_fit_trains_on_the_chosen_threads_and_restores_them(digits, monkeypatch, four_idle_cores):
    seen = []
    original = ppl_vae.train.epoch.update

    def spy(state, batch):
        seen.append(torch.get_num_threads())
        return original(state, batch)

    monkeypatch.setattr(ppl_vae.train.epoch, "update", spy)
    model, guide = VAE(64, latent_dim=4, hidden=16), MLPEncoder(64, latent_dim=4, hidden=16)
    ppl_vae.fit(model, guide, digits.train[:64], epochs=1, batch_size=32, progress=False)
    assert seen and set(seen) == {1} and torch.get_num_threads() == 4
    seen.clear()
    ppl_vae.fit(model, guide, digits.train[:64], epochs=1, batch_size=32, progress=False,
                threads=2)
    assert set(seen) == {2} and torch.get_num_threads() == 4


def test_intra_op_threads_restores_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), intra_op_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise RuntimeError
    assert torch.get_num_threads() == before


def test_the_cli_runs_the_whole_command_on_the_models_threads(four_idle_cores):
    from ppl_vae.runs.train import use_threads

    model, guide = VAE(64, latent_dim=4, hidden=16), MLPEncoder(64, latent_dim=4, hidden=16)
    use_threads(model, guide, 128, "auto")
    assert torch.get_num_threads() == 1  # the digits VAE: one thread for every phase
    use_threads(model, guide, 128, 3)
    assert torch.get_num_threads() == 3
