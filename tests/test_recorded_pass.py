"""Long per-point passes through one recorded graph (``ppl_vae.evaluation.recorded``): every
chunk's draws and densities are the eager pass's on the same seed, chunks of another shape and
programs a recording cannot replay stay eager, and the compiled graph (in the background) is
switched to only once it agrees."""

import importlib

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae.diagnostics.summary import pointwise_pass
from ppl_vae.evaluation.chunks import chunk_draws, global_draws, plan_points
from ppl_vae.evaluation.recorded import ChunkDrawer, spare_core, worth_recording
from ppl_vae.recording.compile import TraceOnce
from ppl_vae.recording.inductor import inductor_unavailable

recorded = importlib.import_module("ppl_vae.evaluation.recorded")
D, Z, K = 12, 3, 16
FIELDS = ("log_lik", "log_prior", "log_q", "log_prior_global", "log_q_global")


class BinaryVAE(nn.Module):
    """A VAE written as Pyro users write one: modules registered with ``pyro.module``, a
    size-less plate, a Bernoulli likelihood on logits (the fast path's), a Normal encoder."""

    def __init__(self, dtype):
        super().__init__()
        torch.manual_seed(0)
        self.dec = nn.Sequential(nn.Linear(Z, 16), nn.Softplus(), nn.Linear(16, D)).to(dtype)
        self.enc = nn.Linear(D, 2 * Z).to(dtype)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data"):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data"):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(h[:, :Z], nn.functional.softplus(h[:, Z:]))
                        .to_event(1))


def _data(n, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, D, generator=g) < 0.3).to(dtype)


@pytest.fixture
def always(monkeypatch):
    """Record every pass, and never start a compile (the recorded graph alone)."""
    monkeypatch.setattr(recorded, "worth_recording", lambda *a, **k: True)
    monkeypatch.setenv("PPL_VAE_BACKGROUND_COMPILE", "1000000")


def _assert_same(d, e, dtype):
    tol = {torch.float32: dict(rtol=1e-6, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-10)}
    for name in FIELDS:
        torch.testing.assert_close(getattr(d, name), getattr(e, name), **tol[dtype])
    for group in ("latents", "observed", "log_lik_sites"):
        assert list(getattr(d, group)) == list(getattr(e, group))
        for site in getattr(e, group):
            torch.testing.assert_close(getattr(d, group)[site], getattr(e, group)[site],
                                       **tol[dtype])
    assert (d.local_sites, d.global_sites, d.data_dims, d.observed_dims, d.rank, d.scales) == \
        (e.local_sites, e.global_sites, e.data_dims, e.observed_dims, e.rank, e.scales)


def _walk(model, guide, x, *, chunk_size=8, seed=3):
    """The drawer's chunks and the eager ones of every chunk (30 rows: the last one ragged)."""
    plan = plan_points(model, guide, (x,), num_draws=K, chunk_size=chunk_size)
    globals_ = global_draws(plan, model, guide, (x,), num_draws=K, seed=seed)
    drawer = ChunkDrawer(plan, model, guide, (x,), num_draws=K, seed=seed, globals_=globals_,
                         num_chunks=len(plan.starts()))
    pairs = [(drawer(s), chunk_draws(plan, model, guide, (x,), s, num_draws=K, seed=seed,
                                     globals_=globals_)) for s in plan.starts()]
    return drawer, pairs


def test_recorded_chunks_are_the_eager_chunks(always, dtype):
    vae = BinaryVAE(dtype)
    drawer, pairs = _walk(vae.model, vae.guide, _data(30, dtype))
    # One graph for the full chunks; the first chunk (which decided) and the ragged last one
    # (6 rows) eager.
    assert drawer.recorder is not None and drawer.recorder.num_traces == 1
    assert drawer.note is None and drawer.path == "recorded"
    for d, e in pairs:
        _assert_same(d, e, dtype)


def test_global_latents_are_replayed_in_every_recorded_chunk(always):
    def model(x):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu[..., None] * x.new_ones(D), 1.0).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("mu_loc", x.new_tensor(0.3))
        pyro.sample("mu", dist.Normal(loc, 0.5))

    x = torch.randn(30, D)
    drawer, pairs = _walk(model, guide, x)
    assert drawer.recorder.num_traces == 1 and drawer.note is None
    for d, e in pairs:
        _assert_same(d, e, torch.float32)
        torch.testing.assert_close(d.log_q_global, pairs[0][0].log_q_global)


def test_a_program_that_reads_a_value_on_the_host_stays_eager(always):
    vae = BinaryVAE(torch.float32)

    def model(x):
        if float(x.sum()) > 1e9:  # a branch on the data: a recording would freeze it
            raise AssertionError
        vae.model(x)

    drawer, pairs = _walk(model, vae.guide, _data(30, torch.float32))
    assert "read a tensor's value on the host" in drawer.note
    assert drawer.path.startswith("eager: the programs read a tensor's value")
    for d, e in pairs:
        _assert_same(d, e, torch.float32)


def test_a_program_that_counts_its_calls_stays_eager(always):
    vae = BinaryVAE(torch.float32)
    calls = [0]

    def guide(x):
        calls[0] += 1
        vae.guide(x)

    drawer, pairs = _walk(vae.model, guide, _data(30, torch.float32))
    assert drawer.note is not None and "each time they run" in drawer.note
    for d, e in pairs:
        _assert_same(d, e, torch.float32)


def test_a_short_pass_is_not_recorded(monkeypatch):
    monkeypatch.setenv("PPL_VAE_BACKGROUND_COMPILE", "1000000")
    vae = BinaryVAE(torch.float32)
    drawer, _ = _walk(vae.model, vae.guide, _data(30, torch.float32))
    assert drawer.recorder is None  # 4 chunks of a millisecond: recording would not pay
    assert drawer.path == "eager"


def test_recording_pays_only_for_a_long_pass():
    # 0.1 s chunks (53 784-dim points x 200 draws): 1,100 chunks (60,000 rows) pay, 100 do not.
    assert worth_recording(0.1, 1100) and not worth_recording(0.1, 100)
    assert not worth_recording(0.001, 10**4)
    # Waiting for the compile (no core free beside the pass) needs a longer pass still.
    assert worth_recording(0.1, 1100, waits=True) and not worth_recording(0.1, 700, waits=True)


def test_a_core_is_spare_only_beside_fewer_threads_than_cores(monkeypatch):
    monkeypatch.setattr(recorded.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(recorded.torch, "get_num_threads", lambda: 1)
    assert spare_core(1) and not spare_core(2)
    monkeypatch.setattr(recorded.torch, "get_num_threads", lambda: 2)
    assert not spare_core(1)


def test_without_a_spare_core_the_pass_waits_for_its_compile(cache, monkeypatch):
    monkeypatch.setattr(recorded, "worth_recording", lambda *a, **k: True)
    monkeypatch.setattr(recorded, "spare_core", lambda processes=1: False)
    monkeypatch.setenv("PPL_VAE_BACKGROUND_COMPILE", "1")
    vae = BinaryVAE(torch.float32)
    x = _data(64, torch.float32)
    plan = plan_points(vae.model, vae.guide, (x,), num_draws=K, chunk_size=8)
    drawer = ChunkDrawer(plan, vae.model, vae.guide, (x,), num_draws=K, seed=3,
                         num_chunks=len(plan.starts()))
    drawer(0)
    drawer.recorder.time_left = None  # millisecond chunks: switch even so
    for start in plan.starts()[1:]:
        drawer(start)
    # Chunk 2 and 3 checked against eager, the compile started after chunk 4 and waited for.
    assert drawer.recorder.num_compiled == 1, drawer.recorder.background_note


def test_background_compiles_off_keep_every_pass_eager(monkeypatch):
    monkeypatch.setattr(recorded, "worth_recording", lambda *a, **k: True)
    monkeypatch.setenv("PPL_VAE_BACKGROUND_COMPILE", "0")
    vae = BinaryVAE(torch.float32)
    drawer, _ = _walk(vae.model, vae.guide, _data(30, torch.float32))
    assert drawer.recorder is None


def test_the_pointwise_table_is_the_eager_one(always, monkeypatch):
    vae = BinaryVAE(torch.float64)
    x = _data(120, torch.float64)

    def table():
        tree, pointwise = pointwise_pass([(vae.model, vae.guide, {})], x, num_draws=40,
                                         points=5, num_worst=2, settings={}, data_plate=None,
                                         seed=0, chunk_size=16, progress=False)
        return pointwise, tree

    fast, tree = table()
    assert tree.attrs["draws_path"] == "recorded"
    monkeypatch.setenv("PPL_VAE_BACKGROUND_COMPILE", "0")
    eager, tree = table()
    assert tree.attrs["draws_path"] == "eager"
    for column in ("k_hat", "log_px", "elbo", "ess"):
        np.testing.assert_allclose(fast[column], eager[column], rtol=1e-10, atol=1e-10)


def test_forward_recordings_return_every_output_and_check_each():
    x = torch.randn(5, 3)

    def fn(x):
        return x * 2, (x.exp() + torch.randn_like(x)).sum(-1)

    recorder = TraceOnce(fn, (), fallback=fn, warn=False)
    with torch.no_grad():
        for _ in range(4):
            torch.manual_seed(7)
            got = recorder(x)
            torch.manual_seed(7)
            want = fn(x)
            assert isinstance(got, tuple) and len(got) == 2
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w)
    assert recorder.num_traces == 1 and recorder.eager_reason is None


def test_a_forward_recording_that_disagrees_falls_back_quietly(recwarn):
    state = {"scale": 1.0}

    class Changing:  # a value read through an object the guards do not see
        def __float__(self):
            state["scale"] += 1.0
            return state["scale"]

    change = Changing()

    def fn(x):
        return (x * torch.as_tensor(float(change)),)

    recorder = TraceOnce(fn, (), fallback=fn, warn=False)
    with torch.no_grad():
        for _ in range(3):
            recorder(torch.ones(2))
    assert recorder.eager_reason is not None
    assert not [w for w in recwarn if "jit" in str(w.message)]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    if inductor_unavailable() is not None:
        pytest.skip(inductor_unavailable())
    return str(tmp_path_factory.mktemp("inductor"))


@pytest.fixture
def cache(cache_dir, monkeypatch):
    """One compile cache for the module: the second test that compiles loads the first's."""
    monkeypatch.setenv("PPL_VAE_COMPILE_CACHE", cache_dir)


def test_the_compiled_pass_is_checked_and_switched_to(cache, monkeypatch):
    monkeypatch.setattr(recorded, "worth_recording", lambda *a, **k: True)
    monkeypatch.setenv("PPL_VAE_BACKGROUND_COMPILE", "1")  # compile after one replay
    vae = BinaryVAE(torch.float32)
    x = _data(64, torch.float32)
    plan = plan_points(vae.model, vae.guide, (x,), num_draws=K, chunk_size=8)
    drawer = ChunkDrawer(plan, vae.model, vae.guide, (x,), num_draws=K, seed=3,
                         num_chunks=len(plan.starts()))
    for start in plan.starts():
        d = drawer(start)
        if drawer.recorder is not None:
            drawer.recorder.time_left = None  # millisecond chunks: switch even so
            assert drawer.recorder.wait_for_compiles(600), "the compile took over 10 min"
        e = chunk_draws(plan, vae.model, vae.guide, (x,), start, num_draws=K, seed=3)
        # The compiled kernels round differently; the random numbers are the same.
        for name in FIELDS[:3]:
            torch.testing.assert_close(getattr(d, name), getattr(e, name), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(d.latents["z"], e.latents["z"], rtol=1e-5, atol=1e-5)
    recorder = drawer.recorder
    assert recorder.num_compiled == 1, recorder.background_note
    assert recorder.background_note is None and recorder.background_seconds > 0
    assert drawer.path == "compiled"


RECORDED = {"air_like", "scvi_plate", "ssvae", "vae_soft"}  # vectorized, several chunks
CORPUS = ["air_like", "bayes_regression", "cvae", "dmm", "gmm", "prodlda", "scanvi",
          "scvi_plate", "sparse_gamma_def", "ssvae", "subsampled", "vae_soft"]


@pytest.mark.parametrize("name", CORPUS)
def test_the_corpus_draws_the_same_chunks_recorded(always, name):
    # Pyro's examples as their authors write them (size-less and subsampling plates, enumerated
    # sites, globals beside locals, per-row parameters, RNN guides): every chunk the drawer
    # returns is the eager chunk, whichever path it took, and a path it could not take is named.
    program = importlib.import_module(f"programs.{name}")
    pyro.clear_param_store()
    model, guide = program.make(torch.float64)
    tensors = program.data(torch.float64)
    n = tensors[0].shape[0]
    plan = plan_points(model, guide, tensors, num_draws=4, data_plate=program.DATA_PLATE,
                       chunk_size=max(1, n // 3))
    globals_ = global_draws(plan, model, guide, tensors, num_draws=4, seed=5)
    drawer = ChunkDrawer(plan, model, guide, tensors, num_draws=4, seed=5, globals_=globals_,
                         num_chunks=len(plan.starts()))
    for start in plan.starts():
        got = drawer(start)
        want = chunk_draws(plan, model, guide, tensors, start, num_draws=4, seed=5,
                           globals_=globals_)
        _assert_same(got, want, torch.float64)
    if name in RECORDED:
        assert drawer.path == "recorded"
    else:  # draws one at a time, one chunk only, or a scale read on the host (scANVI's)
        assert drawer.path == "eager" or drawer.path.startswith("eager: ")
