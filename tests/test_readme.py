"""Every Python block of the README runs as written (with smaller budgets), in order, in one
namespace: later blocks use the names earlier ones define, as a reader pasting them would."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text()
PYTHON = ("python", "py", "python3")
# Budgets cut for the test suite; each must occur in the README (a renamed argument fails here).
SMALLER = {"epochs=20": "epochs=1", "num_draws=100": "num_draws=5"}


def _blocks() -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", TEXT, flags=re.S | re.M)


def test_every_fenced_block_is_found():
    # Each opening fence is matched by a closing one and read as a block: none is skipped.
    openings = re.findall(r"^```(\w*)$", TEXT, flags=re.M)
    assert len(openings) == 2 * len(_blocks())
    assert all(lang for lang, _ in _blocks()), "a block without a language is not checked"


def test_every_python_block_runs(capsys):
    code = [body for lang, body in _blocks() if lang in PYTHON]
    assert len(code) >= 2, "the README's python examples were not found"
    source = "\n".join(code)
    for big, small in SMALLER.items():
        assert big in source, big
        source = source.replace(big, small)
    namespace = {}
    exec(compile(source, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert len(result.history) == 1 and result.settings["estimator"] == "analytic"
    printed = capsys.readouterr().out
    assert "iwae" in printed and "train_elbo" in printed


def test_the_fit_signature_in_the_api_table_is_the_real_one():
    import ast
    import inspect

    from ppl_vae import fit

    shown = re.search(r"`ppl_vae\.fit\((.*?)\)`", TEXT).group(1)
    call = ast.parse(f"f({shown.replace('*, ', '')})".replace("model, guide, data, ", ""))
    call = call.body[0].value
    readme = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    real = {name: p.default for name, p in inspect.signature(fit).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert readme == real
    # **deprecated (the previous release's keywords, for one release) is not shown.
    positional = [name for name, p in inspect.signature(fit).parameters.items()
                  if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert shown.startswith(", ".join(positional) + ", *, ")
