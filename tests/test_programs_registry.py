"""``file.py:name`` programs (programs/registry.py): a file is imported once per process while
its bytes stay the same, so a model and a guide that are methods of one module instance, the
way scvi-tools and Pyro's examples write them, share that instance from the command line too."""


from ppl_vae.cli import main
from ppl_vae.programs.registry import resolve

# One nn.Module with model and guide methods (its encoder in the guide, its decoder in the
# model), instantiated once at import, with the file's own data loader.
PROGRAM = """
import pyro, pyro.distributions as dist, torch
from torch import nn

class Module(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = nn.Linear(6, 4), nn.Linear(2, 6)

    def model(self, x):
        pyro.module("module", self)
        with pyro.plate("cells", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("module", self)
        loc, raw = self.encoder(x).chunk(2, -1)
        with pyro.plate("cells", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

_module = Module()
model, guide = _module.model, _module.guide

def load():
    return torch.randn(48, 6, generator=torch.Generator().manual_seed(0))
"""


def test_a_model_and_a_guide_of_one_file_share_its_objects(tmp_path):
    path = tmp_path / "methods.py"
    path.write_text(PROGRAM)
    model, guide = resolve("model", f"{path}:model"), resolve("guide", f"{path}:guide")
    assert model.__self__ is guide.__self__
    # Changed bytes: imported again, a new instance.
    path.write_text(PROGRAM + "\n# edited\n")
    assert resolve("model", f"{path}:model").__self__ is not model.__self__


def test_methods_of_one_module_train_and_evaluate_from_the_command_line(tmp_path, capsys):
    path = tmp_path / "methods.py"
    path.write_text(PROGRAM)
    out = tmp_path / "run"
    programs = ["--model", f"{path}:model", "--guide", f"{path}:guide", "--data", f"{path}:load"]
    assert main(["train", *programs, "--out", str(out), "--estimator", "analytic", "--epochs",
                 "2", "--batch-size", "16", "--no-progress", "--eval-samples", "3"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), *programs, "--num-samples", "3"]) == 0
    assert "elbo" in capsys.readouterr().out




def test_a_changed_helper_file_imports_the_program_again(tmp_path, monkeypatch):
    """Same program bytes, another helper beside it: the program is imported again, so the
    code that runs is the code on disk (the run's digests read the disk too)."""
    monkeypatch.delitem(__import__("sys").modules, "scales_helper", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "scales_helper.py").write_text("SCALE = 0.5\n")
    path = tmp_path / "uses_helper.py"
    path.write_text("from scales_helper import SCALE\ndef model(x):\n    return SCALE * x\n")
    first = resolve("model", f"{path}:model")
    assert resolve("model", f"{path}:model") is first
    (tmp_path / "scales_helper.py").write_text("SCALE = 0.05\n")
    again = resolve("model", f"{path}:model")
    assert again is not first and again(1.0) == 0.05
