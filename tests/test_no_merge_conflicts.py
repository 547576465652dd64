"""No tracked file keeps a merge's conflict markers (two committed docs once did)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^(<{7} |={7}$|>{7} )", re.MULTILINE)


def _conflicted(paths) -> list[str]:
    found = []
    for path in paths:
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        if MARKER.search(text):
            found.append(path)
    return found


def test_no_tracked_file_holds_conflict_markers():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert tracked, "git ls-files listed nothing"
    assert _conflicted(tracked) == []


def test_the_check_finds_a_conflict(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    (tmp_path / "a.md").write_text("x\n<<<<<<< HEAD\na\n=======\nb\n>>>>>>> other\n")
    (tmp_path / "b.md").write_text("fine\n")
    assert _conflicted(["a.md", "b.md"]) == ["a.md"]
