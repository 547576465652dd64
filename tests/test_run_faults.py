"""Faults and attacks on a run folder, with real processes: a second writer, a kill -9 during every
kind of file write, a full disk, planted symbolic links, a planted config.json and checkpoint,
and a bit flip in every run file."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from _trust_cases import PLANTED_PROGRAM, REPORT, TRAIN, copy_run, flip_bit, make_run

from ppl_vae.cli import main
from ppl_vae.storage import files as storage
from ppl_vae.storage.files import LOCK_NAME, MANIFEST_NAME, RunLockedError, verify_folder
from ppl_vae.train.checkpoint import load_checkpoint, save_checkpoint, save_history
from ppl_vae.train.run_dir import write_config


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished run with every kind of run file: trained, evaluated, diagnosed, reported."""
    return make_run(tmp_path_factory.mktemp("trained") / "run")


def _all_ok(folder: Path) -> None:
    status = verify_folder(folder)
    assert set(status.values()) == {"ok"}, status


# ------------------------------------------------------------------------------ two writers
def test_a_second_writer_gets_a_clear_error_and_the_first_run_is_intact(run_folder, tmp_path,
                                                                       capsys):
    out = tmp_path / "run"
    # The first writer: a real `ppl-vae train` with a budget it will not finish.
    first = subprocess.Popen([sys.executable, "-m", "ppl_vae.cli", *TRAIN, "--epochs",
                              "100000", "--out", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / LOCK_NAME).exists() and (out / LOCK_NAME).read_text()
                   and (out / "checkpoint.pt").exists()):
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for argv in ([*TRAIN, "--out", str(out), "--resume"], [*TRAIN, "--out", str(out),
                                                                "--overwrite"],
                     ["evaluate", str(out)], ["report", str(out), *REPORT]):
            assert main(argv) == 2, argv
            assert f"is in use by process {first.pid}" in capsys.readouterr().err
        with pytest.raises(RunLockedError, match=f"process {first.pid}"):  # the Python API too
            save_checkpoint(out / "checkpoint.pt", {"params": {}})
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # Killed: its last checkpoint is whole and matches the manifest; the lock died with it.
    epoch = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert epoch >= 1
    assert main(["evaluate", str(out), "--num-samples", "3"]) == 0


# ------------------------------------------------------------------------------ Ctrl-C
def _until_epoch(proc: subprocess.Popen, out: Path, epoch: int) -> None:
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() or load_checkpoint(out / "checkpoint.pt")[
            "epoch"] < epoch:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_ctrl_c_leaves_a_valid_resumable_run_and_frees_the_folder(tmp_path, capsys):
    """SIGINT mid-run: exit 130 and one line saying how to go on; every file matches the
    manifest, the lock is free, and --resume continues the history without a gap."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "ppl_vae.cli", *TRAIN, "--epochs", "100000", "--out", str(out)]
    for extra, epoch in (([], 2), (["--resume"], None)):
        proc = subprocess.Popen([*argv, *extra], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            epoch = epoch or load_checkpoint(out / "checkpoint.pt")["epoch"] + 2
            _until_epoch(proc, out, epoch)
            proc.send_signal(signal.SIGINT)
            err = proc.communicate(timeout=60)[1]
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        assert proc.returncode == 130, err
        lines = err.strip().splitlines()  # warnings (one line each) may come first
        assert "Traceback" not in err and all(line.startswith("ppl-vae") for line in lines), err
        assert lines[-1] == (
            f"ppl-vae train: interrupted; {out / 'checkpoint.pt'} holds the last finished epoch: "
            "rerun the same command with --resume to continue"), err
        _all_ok(out)
        epochs = pd.read_csv(out / "history.csv")["epoch"].tolist()
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= epoch
    assert main(["evaluate", str(out), "--num-samples", "3"]) == 0  # the lock was released


# ------------------------------------------------------------- kill -9 during every write
def _payloads(folder: Path):
    """For each kind of run file, the call that writes a new version of it."""
    ckpt = load_checkpoint(folder / "checkpoint.pt")
    return {
        "checkpoint.pt": lambda: save_checkpoint(folder / "checkpoint.pt", {**ckpt, "epoch": 99}),
        "final.pt": lambda: save_checkpoint(folder / "final.pt", {"params": ckpt["params"],
                                                                  "epoch": 99}),
        "history.csv": lambda: save_history(folder, [{"epoch": 99, "train_elbo": -1.0}] * 50),
        "config.json": lambda: write_config(folder, {"model": "eight_schools", "new": 99}),
        "evaluation.csv": lambda: storage.write_bytes(folder / "evaluation.csv", b"x" * 5000),
        "report.html": lambda: storage.write_bytes(folder / "report.html", b"<p>" * 5000),
        "diagnostics.csv": lambda: storage.write_bytes(folder / "diagnostics.csv", b"1\n" * 5000),
        "diagnostics.nc": lambda: storage.atomic_write(
            folder / "diagnostics.nc", lambda tmp: Path(tmp).write_bytes(b"\x89HDF" * 5000)),
    }


def _die_at(point: str, target: str):
    """Patch the storage layer of this (forked) process to SIGKILL itself at ``point`` while
    writing ``target``: half-way through the bytes, after fsync before the rename, or after
    the rename before the manifest's commit."""
    marked = {}
    create, write, replace, commit = storage._create_temp, os.write, os.replace, storage._commit

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    def create_temp(path):
        tmp, fd = create(path)
        if path.name == target:
            marked["fd"] = fd
        return tmp, fd

    def half_write(fd, data):
        if point == "mid-write" and fd == marked.get("fd"):
            write(fd, bytes(data[: len(data) // 2]))
            kill()
        return write(fd, data)

    def rename(src, dst):
        if point == "before-rename" and Path(dst).name == target:
            kill()
        return replace(src, dst)

    def commit_manifest(folder, name):
        if point == "before-commit" and name == target:
            kill()
        return commit(folder, name)

    storage._create_temp, storage.os.write = create_temp, half_write
    storage.os.replace, storage._commit = rename, commit_manifest


KINDS = ["checkpoint.pt", "final.pt", "history.csv", "config.json", "evaluation.csv",
         "report.html", "diagnostics.csv", "diagnostics.nc"]
KILLS = [(kind, point) for kind in KINDS for point in ("mid-write", "before-rename",
                                                       "before-commit")]
KILLS += [("manifest.json", "mid-write"), ("manifest.json", "before-rename")]


@pytest.mark.parametrize("kind, point", KILLS, ids=[f"{k}-{p}" for k, p in KILLS])
def test_kill_during_a_write_leaves_a_consistent_folder(run_folder, tmp_path, kind, point):
    folder = copy_run(run_folder, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    # The manifest is written inside every other write: kill it inside the history's.
    write_kind = "history.csv" if kind == "manifest.json" else kind
    pid = os.fork()
    if pid == 0:  # the writer, killed by SIGKILL at the chosen moment
        with contextlib.suppress(BaseException):
            _die_at(point, kind)
            _payloads(folder)[write_kind]()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    _all_ok(folder)  # every file matches one of its recorded versions
    changed = (folder / write_kind).read_bytes() != before[write_kind]
    assert changed == (point == "before-commit")  # the rename is the moment a file changes
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert (point != "before-commit") == bool(leftovers)
    with storage.lock_run(folder):  # the next start removes what the killed writer left
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    _all_ok(folder)


# ----------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                                            str(disk)], capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_disk_names_device_path_and_size_and_keeps_the_last_checkpoint(small_disk, capsys):
    out = small_disk / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    good = (out / "checkpoint.pt").read_bytes()
    # Fill the disk up to 16 KiB: enough for config.json and the manifest, not a checkpoint.
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - 16384))
    capsys.readouterr()
    assert main([*TRAIN, "--epochs", "3", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no space left on tmpfs (tmpfs) at " in err
    assert f"while writing {out / 'checkpoint.pt'} (" in err and "bytes needed" in err
    assert "the previous checkpoint.pt is kept" in err and "Traceback" not in err
    assert (out / "checkpoint.pt").read_bytes() == good
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    _all_ok(out)


# ------------------------------------------------------------------------ planted symlinks
def test_planted_symlinks_are_never_written_through_nor_read(run_folder, tmp_path, capsys):
    folder = copy_run(run_folder, tmp_path / "run")
    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch")
    (folder / "evaluation.csv").unlink()
    (folder / "evaluation.csv").symlink_to(precious)
    assert main(["evaluate", str(folder), "--num-samples", "3"]) == 0
    assert precious.read_text() == "do not touch"
    assert not (folder / "evaluation.csv").is_symlink()
    for name in ("final.pt", "history.csv", "config.json"):  # a link where a run file is read
        target = copy_run(run_folder, tmp_path / f"link-{name}")
        shutil.copy(target / name, tmp_path / f"{name}.copy")
        (target / name).unlink()
        (target / name).symlink_to(tmp_path / f"{name}.copy")
        capsys.readouterr()
        assert main(["evaluate", str(target)]) == 2
        assert f"{name} is a symbolic link" in capsys.readouterr().err
    (folder / LOCK_NAME).unlink()
    (folder / LOCK_NAME).symlink_to(precious)
    assert main(["evaluate", str(folder)]) == 2
    assert "symbolic link" in capsys.readouterr().err and precious.read_text() == "do not touch"


def test_a_planted_manifest_naming_files_outside_the_folder_is_refused(run_folder, tmp_path,
                                                                        capsys):
    """Anyone can write a manifest with a valid checksum: one naming ../precious.txt is an error,
    and --overwrite (which removes the run's files) never deletes what it names."""
    folder = copy_run(run_folder, tmp_path / "run")
    precious = tmp_path / "precious.txt"
    precious.write_text("do not touch")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"]["../precious.txt"] = {"sha256": "0" * 64, "bytes": 12}
    storage._write_manifest(folder, manifest)  # a self-consistent checksum
    capsys.readouterr()
    assert main(["verify", str(folder)]) == 2
    assert "lists ['../precious.txt'], which are not files of this run folder" in \
        capsys.readouterr().err
    assert main([*TRAIN, "--out", str(folder), "--overwrite"]) == 0
    assert precious.read_text() == "do not touch"
    _all_ok(folder)


# ------------------------------------------------------------------- planted code and data
PLANTED_CONFIGS = {
    "user-file": {"model": "evil.py:model", "guide": "evil.py:guide", "data": "eight_schools"},
    "absolute-file": {"model": "{dir}/evil.py:model", "guide": "eight_schools",
                      "data": "eight_schools"},
    "module-path": {"model": "os:system", "guide": "eight_schools", "data": "eight_schools"},
    "pickled-data": {"model": "eight_schools", "guide": "eight_schools", "data": "evil.npy"},
}
COMMANDS = [["evaluate"], ["diagnose", *REPORT], ["report", *REPORT], ["compare-estimators"]]


@pytest.mark.parametrize("planted", list(PLANTED_CONFIGS))
@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_planted_config_runs_no_code(run_folder, tmp_path, monkeypatch, capsys, planted,
                                       command):
    folder = copy_run(run_folder, tmp_path / "run")
    monkeypatch.chdir(folder)
    (folder / "evil.py").write_text(PLANTED_PROGRAM)
    planted_object = "import os\nclass P:\n    def __reduce__(self):\n        return (os.system, ('touch MARKER',))\n"
    (folder / "make_evil.py").write_text(planted_object + "import numpy as np\n"
                                         "np.save('evil.npy', np.array([P()], dtype=object), "
                                         "allow_pickle=True)\n")
    subprocess.run([sys.executable, "make_evil.py"], check=True, cwd=folder)
    (folder / "MARKER").unlink(missing_ok=True)
    config = {k: v.replace("{dir}", str(folder)) for k, v in PLANTED_CONFIGS[planted].items()}
    # The attacker rewrites the manifest too, so that the planted file passes the checksum.
    storage.write_bytes(folder / "config.json", json.dumps(config).encode())
    assert main([command[0], str(folder), *command[1:]]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (folder / "MARKER").exists()


def test_a_planted_user_file_named_again_must_match_the_recorded_checksum(run_folder, tmp_path,
                                                                          capsys):
    folder = copy_run(run_folder, tmp_path / "run")
    evil = folder / "evil.py"
    evil.write_text(PLANTED_PROGRAM)
    config = {"model": f"{evil}:model", "model_sha256": "0" * 64, "guide": "eight_schools",
              "data": "eight_schools"}
    storage.write_bytes(folder / "config.json", json.dumps(config).encode())
    assert main(["evaluate", str(folder), "--model", f"{evil}:model"]) == 2
    assert "the file differs from the one" in capsys.readouterr().err
    assert not (folder / "MARKER").exists()


def test_a_planted_pickle_checkpoint_runs_no_code(run_folder, tmp_path, capsys):
    folder = copy_run(run_folder, tmp_path / "run")
    script = ("import os, torch\nclass P:\n    def __reduce__(self):\n"
              "        return (os.system, ('touch MARKER',))\n"
              "torch.save({'params': P()}, 'final.pt')\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=folder)
    for manifest in (True, False):  # refused by the checksum, and without it by weights_only
        if not manifest:
            (folder / MANIFEST_NAME).unlink()
        assert main(["evaluate", str(folder)]) == 2
        err = capsys.readouterr().err
        assert ("final.pt does not match" if manifest else "final.pt is not a ppl-vae checkpoint") in err
        assert "weights_only=False" not in err and not (folder / "MARKER").exists()


# ------------------------------------------------------------------ a bit flip in each file
FILES = ["config.json", "history.csv", "checkpoint.pt", "final.pt", "evaluation.csv",
         "report.html", "diagnostics.nc", "diagnostics.csv", "diagnostics_checks.csv",
         "manifest.json"]
# Which command reads the file (beside `ppl-vae verify`, which reads them all).
READERS = {"config.json": ["evaluate"], "history.csv": ["evaluate"], "final.pt": ["evaluate"],
           "checkpoint.pt": [*TRAIN, "--epochs", "2", "--resume", "--out"], "evaluation.csv": ["report", *REPORT],
           "manifest.json": ["evaluate"]}


@pytest.mark.parametrize("name", FILES)
def test_a_bit_flip_in_a_run_file_is_an_error_naming_it(run_folder, tmp_path, capsys, name):
    folder = copy_run(run_folder, tmp_path / "run")
    flip_bit(folder / name)
    assert main(["verify", str(folder)]) == 2
    err = capsys.readouterr().err
    assert (name if name != MANIFEST_NAME else "manifest.json is corrupted") in err
    if name in READERS:
        argv = READERS[name]
        argv = [*argv, str(folder)] if argv[-1] == "--out" else [argv[0], str(folder), *argv[1:]]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert name in err and "Traceback" not in err
