"""``programs.random``: seeded blocks restore every generator (CPU and CUDA), and chunk seeds
are reproducible and distinct."""

import pytest
import torch

from ppl_vae import evaluate
from ppl_vae.guides import MLPEncoder
from ppl_vae.models import VAE
from ppl_vae.programs.random import chunk_seed, preserved, seeded


def test_seeded_is_reproducible_and_restores_the_cpu_generator():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded(7):
        a = torch.randn(5)
    assert torch.equal(torch.get_rng_state(), before)
    with seeded(7):
        b = torch.randn(5)
    assert torch.equal(a, b)
    with preserved():
        torch.randn(3)
    assert torch.equal(torch.get_rng_state(), before)
    with seeded(None):  # None: not seeded, the state advances as without the block
        torch.randn(1)
    assert not torch.equal(torch.get_rng_state(), before)


def test_chunk_seeds_are_reproducible_and_distinct():
    assert chunk_seed(0, "points", 0, 64) == chunk_seed(0, "points", 0, 64)
    seeds = {chunk_seed(s, "points", c, start) for s in (0, 1) for c in (0, 1)
             for start in range(0, 640, 64)}
    assert len(seeds) == 40
    assert chunk_seed(0, "points") != chunk_seed(0, "latent")
    assert chunk_seed(None, "points", 3) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seeded_restores_the_cuda_generator(digits):
    torch.cuda.manual_seed_all(5)
    before = [torch.cuda.get_rng_state(d) for d in range(torch.cuda.device_count())]
    with seeded(11):
        a = torch.randn(4, device="cuda")
    assert all(torch.equal(torch.cuda.get_rng_state(d), s) for d, s in enumerate(before))
    with seeded(11):
        assert torch.equal(torch.randn(4, device="cuda"), a)
    # The same through a diagnostic drawing on the GPU.
    torch.manual_seed(0)
    model, guide = VAE(64, 2, hidden=8).cuda(), MLPEncoder(64, 2, hidden=8).cuda()
    x = torch.as_tensor(digits.test[:16]).cuda()
    before = torch.cuda.get_rng_state()
    evaluate(model, guide, x, num_samples=4)
    assert torch.equal(torch.cuda.get_rng_state(), before)
