"""``--data file.py:function``: a program file's own data, for every command that takes data
(``train``, ``run``, and ``evaluate`` / ``diagnose`` / ``report`` / ``compare-estimators``, where
the function is named again and checked against the recorded sha256)."""

import json

import pytest
import torch

from ppl_vae.cli import main
from ppl_vae.data.datasets import Dataset
from ppl_vae.programs.registry import file_sha256
from ppl_vae.train.user_data import load_data_function, named_data

# A regression written as Pyro's tutorials write it, called with (x, y), with its data loader.
PROGRAM = """
import pyro, pyro.distributions as dist, torch

def model(x, y):
    w = pyro.sample("w", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)

def guide(x, y):
    loc = pyro.param("loc", lambda: x.new_zeros(2))
    with pyro.plate("data", x.shape[0]):
        pass
    pyro.sample("w", dist.Normal(loc, 0.1).to_event(1))

def load():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    return x, x @ torch.tensor([1.0, -2.0]) + 0.5 * torch.randn(40, generator=g)
"""
TRAIN = ["--estimator", "mc", "--epochs", "2", "--batch-size", "40", "--lr", "0.05",
         "--no-progress", "--eval-samples", "3"]


@pytest.fixture
def program(tmp_path):
    source = tmp_path / "regression.py"
    source.write_text(PROGRAM)
    return source


def _names(source):
    return ["--model", f"{source}:model", "--guide", f"{source}:guide"]


def test_train_then_every_run_command_with_the_programs_data(program, tmp_path, capsys):
    out = tmp_path / "run"
    data = ["--data", f"{program}:load"]
    assert main(["train", *_names(program), *data, "--out", str(out), *TRAIN]) == 0
    printed = capsys.readouterr().out
    assert "on regression:load (40 train, 40 test rows)" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == f"{program.resolve()}:load"
    assert len(config["data_sha256"]) == 64
    assert main(["evaluate", str(out), "--num-samples", "3", *_names(program), *data]) == 0
    assert "test-set evaluation (40 rows, K=3)" in capsys.readouterr().out
    small = ["--num-draws", "30", "--no-gaps", "--no-sbc", "--no-progress"]
    assert main(["diagnose", str(out), *small, *_names(program), *data]) == 0
    assert main(["report", str(out), *small, *_names(program), *data]) == 0
    assert (out / "report.html").exists()
    assert main(["compare-estimators", str(out), "--estimators", "mc", "--num-draws", "4",
                 *_names(program), *data]) == 0
    capsys.readouterr()

    # Not named again: never imported because config.json names it.
    assert main(["evaluate", str(out), *_names(program)]) == 2
    assert f"pass --data {program.resolve()}:load to load it" in capsys.readouterr().err
    # Another function, and a changed file.
    assert main(["evaluate", str(out), *_names(program), "--data", f"{program}:model"]) == 2
    assert "was trained on data" in capsys.readouterr().err
    program.write_text(PROGRAM + "\n# edited\n")
    assert main(["evaluate", str(out), *_names(program), *data]) == 2
    err = capsys.readouterr().err
    assert "the file differs from the one" in err and err.count("\n") == 1


def test_a_changed_data_file_is_refused(program, tmp_path):
    config = {"data": f"{program.resolve()}:load", "data_sha256": file_sha256(str(program))}
    assert named_data(tmp_path, config, f"{program}:load") == f"{program}:load"
    assert named_data(tmp_path, {"data": "digits"}, "digits") == "digits"
    with pytest.raises(ValueError, match="trained on data 'digits'"):
        named_data(tmp_path, {"data": "digits"}, f"{program}:load")
    program.write_text(PROGRAM + "\n# edited\n")
    with pytest.raises(ValueError, match=r"--data .*regression.py:load: the file differs from "
                       r"the one .* was trained with \(sha256"):
        named_data(tmp_path, config, f"{program}:load")


def test_run_takes_the_programs_data(program, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *_names(program), "--data", f"{program}:load", "--out", str(out),
                 *TRAIN]) == 0
    assert (out / "report.html").exists()


@pytest.mark.parametrize("body, message", [
    ("def load():\n    return [[1.0, 2.0]]\n", "the function returned list; return a tensor"),
    ("def load():\n    return torch.zeros(4, 2), 'labels'\n",
     "returned a tuple of Tensor, str; return a tensor"),
    ("def load():\n    raise OSError('counts.csv not found')\n",
     "the function raised OSError: counts.csv not found"),
    ("load = 3\n", "'load' is a int, not a function"),
    ("def other():\n    pass\n", "defines no 'load'; it defines: other"),
    ("def load():\n    return torch.zeros(4, 2), torch.zeros(3)\n",
     "members have different numbers of rows: [4, 3]"),
    ("def load():\n    return torch.arange(6).reshape(3, 2)\n", "is int64; pass floats"),
], ids=["list", "tuple-of-str", "raises", "not-callable", "missing", "rows", "integers"])
def test_bad_data_functions_are_one_line_errors(tmp_path, capsys, body, message):
    source = tmp_path / "bad.py"
    source.write_text("import torch\n" + body)
    assert main(["train", "--data", f"{source}:load", "--out", str(tmp_path / "run"),
                 *TRAIN]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_function_may_return_a_tensor_or_a_dataset(tmp_path, dtype):
    source = tmp_path / "mine.py"
    source.write_text(
        "import torch\nfrom ppl_vae.data.datasets import Dataset\n"
        "def counts():\n    return torch.arange(12.0).reshape(6, 2)\n"
        "def split():\n"
        "    return Dataset(torch.ones(5, 3), torch.zeros(2, 3), name='mine')\n")
    data = load_data_function(f"{source}:counts").to(dtype)
    # The run's dtype; no held-out split: test rows are the train rows.
    assert data.train.dtype == dtype and torch.equal(data.train, data.test)
    assert data.train_extra == ()
    data = load_data_function(f"{source}:split")
    assert isinstance(data, Dataset) and data.name == "mine" and data.test.shape == (2, 3)
