"""Run-folder storage: atomic writes, the two-phase manifest, the writer lock, temporaries."""

import errno
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from ppl_vae.storage import files as storage
from ppl_vae.storage.files import (
    LOCK_NAME,
    MANIFEST_NAME,
    RUN_FILE_MODE,
    CorruptFileError,
    DiskFullError,
    RunLockedError,
    atomic_write,
    clean_temporaries,
    lock_run,
    read_run_file,
    verify_folder,
    write_bytes,
)


def test_write_is_recorded_and_read_back(tmp_path):
    write_bytes(tmp_path / "a.csv", b"x,y\n1,2\n", manifest=True)
    assert read_run_file(tmp_path / "a.csv") == b"x,y\n1,2\n"
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["files"]["a.csv"]["bytes"] == 8 and manifest["pending"] == {}
    # A later write without manifest=... is recorded too: the folder is a run folder now.
    write_bytes(tmp_path / "b.html", b"<html>")
    assert verify_folder(tmp_path) == {"a.csv": "ok", "b.html": "ok"}


def test_one_file_mode_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_bytes(tmp_path / "a.pt", b"1", manifest=True)
        atomic_write(tmp_path / "b.nc", lambda tmp: open(tmp, "wb").write(b"2"))
    finally:
        os.umask(old)
    for name in ("a.pt", "b.nc", MANIFEST_NAME):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == RUN_FILE_MODE, name


def test_a_planted_symlink_is_replaced_never_written_through(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "history.csv").symlink_to(target)
    write_bytes(tmp_path / "run" / "history.csv", b"epoch\n1\n", manifest=True)
    assert target.read_text() == "precious"
    assert not (tmp_path / "run" / "history.csv").is_symlink()
    # Reading refuses a link in place of a run file.
    (tmp_path / "run" / "final.pt").symlink_to(target)
    with pytest.raises(CorruptFileError, match="symbolic link"):
        read_run_file(tmp_path / "run" / "final.pt")


@pytest.mark.parametrize("change", ["flip", "truncate", "empty", "replace"])
def test_a_changed_file_is_an_error_naming_it(tmp_path, change):
    path = write_bytes(tmp_path / "final.pt", bytes(range(256)) * 4, manifest=True)
    data = bytearray(path.read_bytes())
    if change == "flip":
        data[100] ^= 0x01
    elif change == "truncate":
        data = data[:500]
    elif change == "empty":
        data = b""
    else:
        data = b"a file ppl-vae did not write"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"final\.pt does not match its checksum"):
        read_run_file(path)


def test_an_unlisted_file_and_a_corrupted_manifest_are_errors(tmp_path):
    write_bytes(tmp_path / "config.json", b"{}", manifest=True)
    (tmp_path / "final.pt").write_bytes(b"planted")
    with pytest.raises(CorruptFileError, match="not listed"):
        read_run_file(tmp_path / "final.pt")
    text = (tmp_path / MANIFEST_NAME).read_text()
    (tmp_path / MANIFEST_NAME).write_text(text.replace('"bytes": 2', '"bytes": 3'))
    with pytest.raises(CorruptFileError, match="manifest.json is corrupted"):
        read_run_file(tmp_path / "config.json")


def test_old_or_new_version_match_between_stage_and_commit(tmp_path, monkeypatch):
    """The two-phase manifest: killed between its rename and its commit, a file still matches."""
    write_bytes(tmp_path / "checkpoint.pt", b"old", manifest=True)
    storage._stage(tmp_path, "checkpoint.pt", {"sha256": storage._sha256(b"new"), "bytes": 3})
    assert read_run_file(tmp_path / "checkpoint.pt") == b"old"  # killed before the rename
    storage._raw_write(tmp_path / "checkpoint.pt", b"new")
    assert read_run_file(tmp_path / "checkpoint.pt") == b"new"  # killed before the commit
    write_bytes(tmp_path / "checkpoint.pt", b"newer")
    (tmp_path / "checkpoint.pt").write_bytes(b"old")  # an old copy restored over the new one
    with pytest.raises(CorruptFileError):
        read_run_file(tmp_path / "checkpoint.pt")


def test_disk_full_names_device_path_and_bytes_and_keeps_the_old_file(tmp_path, monkeypatch):
    write_bytes(tmp_path / "checkpoint.pt", b"good", manifest=True)
    real_write = os.write

    def full(fd, data):
        if len(data) > 900:  # the checkpoint, not the manifest
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(storage.os, "write", full)
    with pytest.raises(DiskFullError, match=r"no space left on .* while writing .*checkpoint\.pt "
                                            r"\(1000 bytes needed.*previous checkpoint\.pt is kept"):
        write_bytes(tmp_path / "checkpoint.pt", b"x" * 1000)
    monkeypatch.undo()
    assert read_run_file(tmp_path / "checkpoint.pt") == b"good"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


HOLDER = """
import sys, time
from ppl_vae.storage.files import lock_run
with lock_run(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold_lock(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_refuses_a_second_process_and_dies_with_its_owner(tmp_path):
    proc = _hold_lock(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"in use by process {proc.pid}"):
            with lock_run(tmp_path):
                pass
        with pytest.raises(RunLockedError, match=f"being written by process {proc.pid}"):
            write_bytes(tmp_path / "checkpoint.pt", b"1", manifest=True)
    finally:
        proc.kill()
        proc.wait()
    with lock_run(tmp_path), lock_run(tmp_path):  # free again after a kill -9; re-entrant
        write_bytes(tmp_path / "checkpoint.pt", b"1", manifest=True)
    assert (tmp_path / LOCK_NAME).read_text() == ""


def test_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".checkpoint.pt~{storage._HOST}~{dead}~abcd1234.tmp"
    live = tmp_path / f".history.csv~{storage._HOST}~{os.getpid()}~abcd1234.tmp"
    other_host = tmp_path / f".final.pt~elsewhere~{dead}~abcd1234.tmp"
    for path in (stale, live, other_host):
        path.write_bytes(b"half")
    time.sleep(0.01)
    assert clean_temporaries(tmp_path) == [stale.name]
    assert live.exists() and other_host.exists()
    with lock_run(tmp_path):  # the lock holder is the only writer: every temporary goes
        assert not live.exists() and not other_host.exists()


def test_fit_holds_the_lock_for_the_whole_run(tmp_path):
    import pyro
    import pyro.distributions as dist
    import torch

    import ppl_vae

    def model(x):
        loc = pyro.param("loc", lambda: x.new_zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        pass

    x = torch.randn(20)
    proc = _hold_lock(tmp_path)
    try:  # another process holds the folder: fit refuses before its first epoch
        with pytest.raises(RunLockedError, match=f"in use by process {proc.pid}"):
            ppl_vae.fit(model, guide, x, epochs=1, batch_size=10, progress=False,
                        checkpoint_dir=tmp_path)
        assert not (tmp_path / "checkpoint.pt").exists()
    finally:
        proc.kill()
        proc.wait()

    answers = []
    tries = (
        "import sys\nfrom ppl_vae.storage.files import RunLockedError, lock_run\n"
        "try:\n    with lock_run(sys.argv[1]):\n        print('got it')\n"
        "except RunLockedError:\n    print('refused')\n"
    )

    def probe(record, state):  # while fit trains, a second process is refused the folder
        answers.append(subprocess.run([sys.executable, "-c", tries, str(tmp_path)], text=True,
                                      capture_output=True, timeout=120).stdout.strip())

    ppl_vae.fit(model, guide, x, epochs=1, batch_size=10, progress=False,
                checkpoint_dir=tmp_path, callbacks=[probe])
    assert answers == ["refused"]
    after = subprocess.run([sys.executable, "-c", tries, str(tmp_path)], text=True,
                           capture_output=True, timeout=120).stdout.strip()
    assert after == "got it"  # released when fit returns


def test_import_needs_no_fcntl():
    # Windows has no fcntl: the package imports without it (the lock imports it where used).
    code = ("import sys; sys.modules['fcntl'] = None; import ppl_vae, ppl_vae.storage.files; "
            "import ppl_vae.cli.main; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    # The check can fail: a module that imports fcntl at the top is refused the same way.
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['fcntl'] = None; "
                           "import fcntl"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
