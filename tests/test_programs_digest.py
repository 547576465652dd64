"""Program digests: what changes a program's digest (its source, the constants it reads, the
helper files it imports from its folder) and what does not (code it never names)."""

import sys

import pyro
import pytest
import torch

from ppl_vae import fit
from ppl_vae.programs.digest import program_digest, programs_differences
from ppl_vae.programs.registry import resolve

PROGRAM = """
import pyro, pyro.distributions as dist
import helper_{tag} as helper

SCALE = {scale}

def model(x):
    loc = pyro.sample("loc", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, helper.width(SCALE)), obs=x)

def guide(x):
    m = pyro.param("m", lambda: x.new_zeros(()))
    pyro.sample("loc", dist.Normal(m, 0.5))

def unrelated():
    return {unrelated}
"""


def _write(folder, tag, scale=0.5, unrelated=1, factor=1.0):
    (folder / f"helper_{tag}.py").write_text(f"def width(s):\n    return {factor} * s\n")
    (folder / "prog.py").write_text(PROGRAM.format(tag=tag, scale=scale, unrelated=unrelated))


def _load(folder, tag, name):
    sys.modules.pop(f"helper_{tag}", None)  # a fresh process imports the helper anew
    sys.path.insert(0, str(folder))
    try:
        return resolve("model", f"{folder / 'prog.py'}:{name}")
    finally:
        sys.path.remove(str(folder))


@pytest.mark.parametrize("change, label", [
    ({"scale": 0.05}, "model: prog.py:SCALE changed"),
    ({"factor": 2.0}, "model: helper_{tag}.py changed"),
    ({"unrelated": 2}, None),
])
def test_digest_follows_source_constants_and_helpers(tmp_path, change, label):
    tag = f"d{len(str(tmp_path))}{abs(hash(str(change)))}"
    _write(tmp_path, tag)
    before = {"model": program_digest(_load(tmp_path, tag, "model"))}
    assert f"helper_{tag}.py" in before["model"] and "prog.py:model" in before["model"]
    _write(tmp_path, tag, **change)
    after = {"model": program_digest(_load(tmp_path, tag, "model"))}
    assert programs_differences(before, after) == ([] if label is None else
                                                   [label.format(tag=tag)])


def test_library_programs_have_an_empty_digest():
    from pyro.infer.autoguide import AutoNormal

    assert program_digest(AutoNormal(lambda: None)) == {}
    assert program_digest(torch.nn.Linear(2, 2)) == {}


def test_resume_with_changed_program_code_is_refused(tmp_path):
    tag = "resume"
    _write(tmp_path, tag, scale=0.5)
    x = torch.randn(16)
    kwargs = dict(epochs=1, batch_size=8, progress=False, estimator="mc",
                  checkpoint_dir=tmp_path / "run")
    fit(_load(tmp_path, tag, "model"), _load(tmp_path, tag, "guide"), x, **kwargs)
    _write(tmp_path, tag, scale=0.05)  # same parameter names and shapes, other likelihood
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"model: prog.py:SCALE changed"):
        fit(_load(tmp_path, tag, "model"), _load(tmp_path, tag, "guide"), x,
            **{**kwargs, "epochs": 2, "resume": True})
    _write(tmp_path, tag, scale=0.5)  # restored: the same run resumes
    pyro.clear_param_store()
    result = fit(_load(tmp_path, tag, "model"), _load(tmp_path, tag, "guide"), x,
                 **{**kwargs, "epochs": 2, "resume": True})
    assert result.history["epoch"].tolist() == [1, 2]


def test_a_program_defined_without_a_file_is_digested_from_its_code():
    """A notebook cell or an interactive prompt keeps no source file: the compiled code is the
    digest, and another body gives another digest."""
    import types

    def define(body):
        module = types.ModuleType("_notebook_cell")
        sys.modules["_notebook_cell"] = module
        source = f"import torch\nclass M(torch.nn.Module):\n    def model(self, x):\n        {body}\n"
        exec(compile(source, "<ipython-input-1>", "exec"), module.__dict__)
        return module.M()

    try:
        first, same, other = define("return x"), define("return x"), define("return 2 * x")
        digest = program_digest(first.model)
        assert list(digest) == ["<interactive>:M"]
        assert program_digest(same.model) == digest
        assert program_digest(other.model) != digest
    finally:
        sys.modules.pop("_notebook_cell", None)
