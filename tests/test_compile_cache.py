"""The persistent compile cache (``ppl_vae.recording.private.compile_cache``): Inductor's graph
caches in a per-user folder, so that a second process compiling the same graph starts warm."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ppl_vae.recording.private as private
from ppl_vae.recording.inductor import inductor_unavailable
from ppl_vae.recording.private import CACHE_ENV, compile_cache, compile_cache_dir


def test_the_cache_folder_is_per_user_and_overridable(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert compile_cache_dir() == Path.home() / ".cache" / "ppl-vae" / "inductor"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache_dir() == tmp_path / "xdg" / "ppl-vae" / "inductor"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"


def test_inductor_sees_the_folder_while_compiling_only(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    with compile_cache():
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(tmp_path / "cache")
    assert (tmp_path / "cache").is_dir()
    # Inductor's own default, set by its first use, is replaced while compiling, then restored.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "default"))
    with compile_cache():
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "default")
    # A user's own Inductor cache folder (set before ppl-vae was imported) wins.
    monkeypatch.setattr(private, "_USER_CACHE", str(tmp_path / "theirs"))
    with compile_cache():
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "default")


_COMPILE = textwrap.dedent("""
    import os, sys, time
    os.environ["PPL_VAE_COMPILE_CACHE"] = sys.argv[1]
    import torch
    from torch._dynamo.utils import counters
    from torch.fx.experimental.proxy_tensor import make_fx
    from ppl_vae.recording.background import compile_in_background

    def step(leaves, tensors):
        (w,), (x,) = leaves, tensors
        return [torch.tanh(x @ w).sum(), torch.cos(w)]

    w, x = torch.ones(3, 4), torch.ones(5, 3)
    job = compile_in_background(make_fx(step)([w], [x]), [w], [x], x.device)
    assert job.wait(600)
    job.finish()  # the same compile in this process, after the worker's
    assert job.error is None, job.error
    print(counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"],
          flush=True)
""")


def test_a_compile_is_loaded_from_the_cache_another_process_wrote(tmp_path):
    if inductor_unavailable() is not None:
        pytest.skip(inductor_unavailable())
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    runs = [subprocess.run([sys.executable, "-c", _COMPILE, str(tmp_path)], capture_output=True,
                           text=True, timeout=600, env=env) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    # The worker process compiled into the folder (the first run) or found it there (the
    # second); the training process then only loaded the graph from it, never compiled it.
    for run in runs:
        hits, misses = map(int, run.stdout.split())
        assert hits >= 1 and misses == 0, run.stdout
    assert any((tmp_path / "fxgraph").rglob("*")), "nothing was written to the cache folder"
