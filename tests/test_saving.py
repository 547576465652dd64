"""``FitResult.save`` / ``ppl_vae.load`` (train/saving.py, train/loading.py, train/records.py):
folders in the CLI's format, read back by Python and by ``ppl-vae evaluate``."""

import importlib.util
import json
import sys

import numpy as np
import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import ppl_vae
from ppl_vae.cli import main

PROGRAMS = '''
import pyro, torch
import pyro.distributions as dist
from torch import nn


class Encoder(nn.Module):
    def __init__(self, obs_dim=4, latent_dim=2):
        super().__init__()
        self.net = nn.Linear(obs_dim, 2 * latent_dim)
        self.latent_dim = latent_dim

    def forward(self, x):
        pyro.module("encoder", self)
        loc, raw = self.net(x).split(self.latent_dim, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def model(x):
    w = pyro.param("w", torch.zeros(2, x.shape[-1], dtype=x.dtype, device=x.device))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype, device=x.device),
                                         1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w, 1.0).to_event(1), obs=x)


guide = Encoder()
'''


@pytest.fixture
def programs(tmp_path):
    """A user's file with a function model and a module guide, imported as a script would."""
    path = tmp_path / "programs.py"
    path.write_text(PROGRAMS)
    spec = importlib.util.spec_from_file_location("h6_user_programs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield path, module
    sys.modules.pop(spec.name, None)


def _data(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(48, 4, generator=g).to(dtype), torch.randn(16, 4, generator=g).to(dtype)


def _fit(module, x, xv, **kw):
    return ppl_vae.fit(module.model, module.guide, x, validation_data=xv, epochs=2,
                       batch_size=16, progress=False, dtype=x.dtype, **kw)


def test_save_then_load_gives_the_trained_parameters(tmp_path, programs, dtype):
    _, module = programs
    x, xv = _data(dtype)
    result = _fit(module, x, xv)
    trained = {k: v.clone() for k, v in result.params["guide"].items()}
    w = pyro.param("w").detach().clone()
    result.save(tmp_path / "run", data=x, validation_data=xv)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"].endswith("programs.py:model") and "model_sha256" in config
    assert config["parameters"]["guide"]["net.weight"] == [4, 4]
    # Scramble the programs' parameters: load must put the trained ones back.
    pyro.clear_param_store()
    torch.nn.init.zeros_(module.guide.net.weight)
    loaded = ppl_vae.load(tmp_path / "run", model=module.model, guide=module.guide)
    assert loaded.guide is module.guide
    for name, value in trained.items():
        assert torch.equal(module.guide.state_dict()[name], value)
    assert torch.equal(pyro.param("w").detach(), w) and pyro.param("w").dtype == dtype
    assert loaded.history["val_elbo"].tolist() == result.history["val_elbo"].tolist()
    assert loaded.settings["dtype"] == str(dtype).replace("torch.", "")


def test_save_refuses_an_existing_run_without_overwrite(tmp_path, programs):
    _, module = programs
    x, xv = _data()
    result = _fit(module, x, xv)
    result.save(tmp_path / "run")
    before = (tmp_path / "run" / "final.pt").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        result.save(tmp_path / "run")
    assert (tmp_path / "run" / "final.pt").read_bytes() == before
    (tmp_path / "run" / "notes.txt").write_text("mine")
    result.save(tmp_path / "run", data=x, validation_data=xv, overwrite=True)
    assert (tmp_path / "run" / "data.npz").exists()
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # not a run file: kept


def test_save_refuses_other_data_than_the_training_data(tmp_path, programs):
    _, module = programs
    x, xv = _data()
    result = _fit(module, x, xv)
    with pytest.raises(ValueError, match="not the data the run was trained on"):
        result.save(tmp_path / "run", data=x + 1.0, validation_data=xv)
    assert not (tmp_path / "run" / "config.json").exists()


def test_load_refuses_programs_with_other_parameters(tmp_path, programs):
    _, module = programs
    x, xv = _data()
    _fit(module, x, xv).save(tmp_path / "run", data=x, validation_data=xv)
    other = module.Encoder()
    other.extra = torch.nn.Linear(2, 2)  # a layer the trained guide did not have
    with pytest.raises(ValueError, match="guide 'extra.weight' was not trained"):
        ppl_vae.load(tmp_path / "run", model=module.model, guide=other)
    wider = module.Encoder()
    wider.net = torch.nn.Linear(4, 4, bias=False)
    with pytest.raises(ValueError, match="guide 'net.bias' is missing"):
        ppl_vae.load(tmp_path / "run", model=module.model, guide=wider)
    with pytest.raises(ValueError, match="--model .*programs.py:model"):
        ppl_vae.load(tmp_path / "run")


def test_fit_checkpoint_dir_is_a_run_folder(tmp_path, programs):
    _, module = programs
    x, xv = _data()
    result = _fit(module, x, xv, checkpoint_dir=tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["data"] == "none" and config["settings"]["epochs"] == 2
    assert (tmp_path / "ck" / "final.pt").exists()
    with pytest.raises(ValueError, match="records no data"):
        ppl_vae.load(tmp_path / "ck", model=module.model, guide=module.guide)
    loaded = ppl_vae.load(tmp_path / "ck", model=module.model, guide=module.guide, data=x,
                          validation_data=xv)
    for name, value in result.params["guide"].items():
        assert torch.equal(loaded.params["guide"][name], value)
    with pytest.raises(ValueError, match="not the data the run was trained on"):
        ppl_vae.load(tmp_path / "ck", model=module.model, guide=module.guide, data=x * 2,
                     validation_data=xv)


def test_fit_never_trains_into_a_saved_run(tmp_path, programs):
    _, module = programs
    x, xv = _data()
    _fit(module, x, xv).save(tmp_path / "run", data=x, validation_data=xv)
    before = (tmp_path / "run" / "final.pt").read_bytes()
    with pytest.raises(FileExistsError, match="saved by FitResult.save"):
        _fit(module, x, xv, checkpoint_dir=tmp_path / "run")
    assert (tmp_path / "run" / "final.pt").read_bytes() == before
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_resumed_fit_keeps_its_folder_a_run_folder(tmp_path, programs):
    _, module = programs
    x, xv = _data()
    _fit(module, x, xv, checkpoint_dir=tmp_path / "ck")
    ppl_vae.fit(module.model, module.guide, x, validation_data=xv, epochs=3, batch_size=16,
                progress=False, checkpoint_dir=tmp_path / "ck", resume=True)
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["settings"]["epochs"] == 3


def test_autoguide_parameters_load_after_one_run_of_the_programs(tmp_path, programs):
    """AutoNormal makes its parameters on its first call: load runs the programs once on the
    saved data before the trained values load."""
    _, module = programs
    x, xv = _data()
    guide = AutoNormal(module.model)
    result = ppl_vae.fit(module.model, guide, x, epochs=2, batch_size=48, progress=False)
    result.save(tmp_path / "run", data=x)
    trained = guide.locs.z.detach().clone()
    fresh = AutoNormal(module.model)
    loaded = ppl_vae.load(tmp_path / "run", model=module.model, guide=fresh)
    assert torch.equal(loaded.guide.locs.z.detach(), trained)


def test_cli_evaluates_a_folder_saved_from_python(tmp_path, programs, capsys):
    path, module = programs
    x, xv = _data()
    _fit(module, x, xv).save(tmp_path / "run", data=x, validation_data=xv)
    assert main(["evaluate", str(tmp_path / "run"), "--num-samples", "3",
                 "--model", f"{path}:model", "--guide", f"{path}:guide"]) == 0
    assert "test-set evaluation (16 rows" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "run"), "--num-draws", "30", "--no-gaps", "--no-sbc",
                 "--no-progress", "--model", f"{path}:model", "--guide", f"{path}:guide"]) == 0
    assert "Verdicts" in (tmp_path / "run" / "report.html").read_text()


def test_a_program_without_a_file_is_described_and_must_be_passed_again(tmp_path):
    x = torch.randn(32, 3)

    def local(x):  # defined in a function: no module-level name to record
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
            pyro.sample("x", pyro.distributions.Normal(z.unsqueeze(-1), 1.0).to_event(1), obs=x)

    guide = AutoNormal(local)
    ppl_vae.fit(local, guide, x, epochs=1, batch_size=32, progress=False).save(tmp_path / "r",
                                                                                data=x)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model"].startswith("python:") and config["model"].endswith("local")
    with pytest.raises(ValueError, match="saved from Python.*pass the programs again"):
        ppl_vae.load(tmp_path / "r")
    loaded = ppl_vae.load(tmp_path / "r", model=local, guide=AutoNormal(local))
    assert loaded.guide.locs.z.shape == (32,)


def test_short_repr_and_html():
    x = torch.randn(32, 3)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
            pyro.sample("x", pyro.distributions.Normal(z.unsqueeze(-1), 1.0).to_event(1), obs=x)

    result = ppl_vae.fit(model, AutoNormal(model), x, epochs=1, batch_size=32, progress=False)
    text = repr(result)
    assert len(text) < 300 and "epochs=1" in text and "stopped_by=epochs" in text
    assert "<table>" in result._repr_html_() and "AutoNormal" in result._repr_html_()


ZOO_CHILD = '''
import sys, numpy as np, torch, ppl_vae
loaded = ppl_vae.load(sys.argv[1])
x = torch.from_numpy(np.load(sys.argv[2]))
np.save(sys.argv[3], ppl_vae.latents(loaded.model, loaded.guide, x)["z"].numpy())
'''


def test_zoo_programs_saved_from_python_reload_in_a_fresh_process(tmp_path, capsys):
    """The zoo's module names carry a per-process counter (``vae_3``): the folder names the
    zoo entry and its options instead, so a new process rebuilds and loads the same programs."""
    import subprocess

    from ppl_vae.guides import MLPEncoder
    from ppl_vae.models import VAE

    x = (torch.rand(64, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    VAE(8, 3, hidden=5), MLPEncoder(8, 3)  # built first: this process's counters move on
    model, guide = VAE(8, 2, hidden=[16, 8]), MLPEncoder(8, 2, hidden=16)
    result = ppl_vae.fit(model, guide, x, epochs=2, batch_size=32, progress=False)
    result.save(tmp_path / "run", data=x)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["model"], config["guide"]) == ("vae", "mlp")
    assert config["model_options"] == {"latent_dim": 2, "hidden": [16, 8]}
    assert config["guide_options"] == {"latent_dim": 2, "hidden": 16}
    np.save(tmp_path / "x.npy", x.numpy())
    (tmp_path / "child.py").write_text(ZOO_CHILD)
    done = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "run"),
                           str(tmp_path / "x.npy"), str(tmp_path / "z.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = ppl_vae.latents(result.model, result.guide, x)["z"].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), expected, rtol=1e-5, atol=1e-6)
    done = subprocess.run([sys.executable, "-m", "ppl_vae.cli", "evaluate",
                           str(tmp_path / "run"), "--num-samples", "3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "elbo" in done.stdout, done.stderr


def test_a_subclass_of_a_zoo_program_is_not_recorded_as_the_zoo_entry():
    from ppl_vae.models import VAE
    from ppl_vae.train.records import describe_program

    class Mine(VAE):
        def __init__(self):
            super().__init__(8, 2, hidden=4)

    assert describe_program("model", VAE(8, 2, hidden=4)) == {
        "model": "vae", "model_options": {"latent_dim": 2, "hidden": 4}}
    assert describe_program("model", Mine())["model"].startswith("python:")
