"""The README's custom-model example runs as written (with a smaller epoch count)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_custom_model_example_runs(capsys):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    code = blocks[0].replace("epochs=20", "epochs=1")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert len(namespace["result"].history) == 1
    assert "iwae" in capsys.readouterr().out
