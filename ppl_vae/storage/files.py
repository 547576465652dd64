"""Run-folder storage: atomic writes, a sha256 manifest, one writer at a time, no symbolic links.

Every run file is written to a temporary file in its own folder (created exclusively, never
through a link), flushed with ``fsync``, given :data:`RUN_FILE_MODE` and renamed onto its name;
the folder is then fsynced so that the rename survives a crash. A kill at any moment leaves
either the old or the new file, never half of one.

``manifest.json`` holds the sha256 and size of every run file. It is updated in two phases
around each rename: the new digest is staged under ``pending`` before the rename and committed
under ``files`` after it, so a kill at any point leaves each file matching one of its recorded
digests, while a file changed afterwards (a bit flip, a truncation, an edit, a planted copy)
matches none and is an error naming it. The manifest carries its own digest.

A run folder is locked (``fcntl.flock``; on Windows ``msvcrt.locking``, see
:mod:`~ppl_vae.storage.locking`) on ``.ppl-vae.lock``, which holds the owner's pid and host,
while a process writes in it; the system releases the lock when the process dies, so a
killed run never leaves a stale lock. Temporary files carry the writer's host and pid and are
removed at the next start once their writer is gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import socket
import stat
import time
import warnings
from pathlib import Path

from ppl_vae.storage.locking import NOFOLLOW, set_mode, try_lock, unlock

__all__ = [
    "RUN_FILE_MODE", "MANIFEST_NAME", "LOCK_NAME", "CorruptFileError", "DiskFullError",
    "RunLockedError", "write_bytes", "atomic_write", "read_run_file", "verify_folder",
    "lock_run", "clean_temporaries", "remove_run_files", "run_file_names",
]

RUN_FILE_MODE = 0o644
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".ppl-vae.lock"
_FORMAT = "ppl-vae run manifest"
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\.(?P<name>.+)~(?P<host>[A-Za-z0-9_-]+)~(?P<pid>\d+)~[0-9a-f]+\.tmp$")
_HELD: dict[str, list] = {}  # realpath of a locked folder -> [fd, depth]
_SWEPT: set[str] = set()  # folders whose stale temporaries this process already removed


class CorruptFileError(ValueError):
    """A run file does not match its manifest, or is not what it claims to be."""


class DiskFullError(OSError):
    """A write ran out of space; the previous version of the file is kept."""


class RunLockedError(RuntimeError):
    """Another process is writing in the run folder."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- low-level writes
def _device_of(path: Path) -> str:
    """``"tmpfs at /mnt/x"``: the file system that holds ``path`` (for the disk-full message)."""
    mount = Path(os.path.abspath(path))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[1] == str(mount):
                return f"{parts[0]} ({parts[2]}) at {mount}"
    return str(mount)


def _space_error(exc: OSError, path: Path, needed: int) -> OSError:
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return exc
    try:
        free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
    except OSError:
        free = None
    what = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    kept = f"; the previous {path.name} is kept" if path.exists() else ""
    error = DiskFullError(
        f"{what} on {_device_of(path.parent)} while writing {path} ({needed} bytes needed"
        f"{'' if free is None else f', {free} free'}){kept}: free some space or write the run "
        "elsewhere (--out)")
    error.errno = exc.errno
    return error


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}~{_HOST}~{os.getpid()}~{secrets.token_hex(4)}.tmp")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_temp(path: Path) -> tuple[Path, int]:
    tmp = _temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, RUN_FILE_MODE)
    set_mode(fd, RUN_FILE_MODE)  # the same mode for every run file, whatever the umask
    return tmp, fd


def _replace(tmp: Path, path: Path) -> None:
    # rename() replaces a symbolic link planted at ``path`` instead of writing through it.
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _raw_write(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to ``path`` (no manifest)."""
    tmp, fd = _create_temp(path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _replace(tmp, path)
    except OSError as exc:
        raise _space_error(exc, path, len(data)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --------------------------------------------------------------------------------- manifest
def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return None
    try:
        manifest = json.loads(_read_regular(path))
        body = {"files": manifest["files"], "pending": manifest["pending"]}
        ok = manifest.get("format") == _FORMAT and manifest["sha256"] == _sha256(
            json.dumps(body, sort_keys=True).encode())
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise CorruptFileError(f"{path} is corrupted (it does not match its own checksum): the "
                               "run folder's files cannot be checked; retrain or restore it")
    # Anyone can write a self-consistent manifest: it may name only files of this folder (a
    # planted "../x" would otherwise be read by verify and deleted by --overwrite).
    foreign = [n for part in ("files", "pending") for n in manifest[part] if not _run_file_name(n)]
    if foreign:
        raise CorruptFileError(f"{path} lists {foreign[:3]}, which are not files of this run "
                               "folder: it was not written by ppl-vae; remove the folder or retrain")
    return manifest


def _run_file_name(name) -> bool:
    """A plain file name in the folder: no separator, not ``.``/``..``, not the lock file."""
    return (isinstance(name, str) and name not in ("", ".", "..", LOCK_NAME, MANIFEST_NAME)
            and "/" not in name and "\\" not in name and "\0" not in name)


def _write_manifest(folder: Path, manifest: dict) -> None:
    body = {"files": manifest["files"], "pending": manifest["pending"]}
    out = {"format": _FORMAT, "version": 1, **body,
           "sha256": _sha256(json.dumps(body, sort_keys=True).encode())}
    _raw_write(folder / MANIFEST_NAME, json.dumps(out, indent=1, sort_keys=True).encode())


def _stage(folder: Path, name: str, entry: dict) -> None:
    manifest = _read_manifest(folder) or {"files": {}, "pending": {}}
    manifest["pending"][name] = entry
    _write_manifest(folder, manifest)


def _commit(folder: Path, name: str) -> None:
    manifest = _read_manifest(folder) or {"files": {}, "pending": {}}
    manifest["files"][name] = manifest["pending"].pop(name)
    _write_manifest(folder, manifest)


def _before_write(folder: Path) -> None:
    _check_writer(folder)
    key = os.path.realpath(folder)
    if key not in _SWEPT:
        _SWEPT.add(key)
        clean_temporaries(folder)


def write_bytes(path, data: bytes, *, manifest: bool | None = None) -> Path:
    """Write ``data`` to ``path`` atomically, recorded in the folder's manifest.

    ``manifest=None`` records the file when its folder already has a manifest (a run folder);
    ``True`` creates one. Raises :class:`DiskFullError` when the disk fills (the previous file is
    kept) and :class:`RunLockedError` when another process holds the folder's lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = manifest if manifest is not None else (path.parent / MANIFEST_NAME).exists()
    if record:
        _before_write(path.parent)
        _stage(path.parent, path.name, {"sha256": _sha256(data), "bytes": len(data)})
    _raw_write(path, bytes(data))
    if record:
        _commit(path.parent, path.name)
    return path


def atomic_write(path, write, *, manifest: bool | None = None) -> Path:
    """Call ``write(tmp_path)`` (a writer that needs a file name, such as netCDF), then publish
    the file as :func:`write_bytes` does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temp(path)
    os.close(fd)
    try:
        try:
            write(str(tmp))
            os.chmod(tmp, RUN_FILE_MODE)
        except OSError as exc:
            raise _space_error(exc, path, tmp.stat().st_size if tmp.exists() else 0) from None
        data = _read_regular(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return write_bytes(path, data, manifest=manifest)


# ---------------------------------------------------------------------------------- reading
def _read_regular(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptFileError(f"{path} is a symbolic link; run files are read only as "
                                   "regular files ppl-vae wrote itself") from None
        raise
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise CorruptFileError(f"{path} is not a regular file")
        return handle.read()


def _matches(manifest: dict, name: str, digest: str) -> bool:
    entries = [manifest["files"].get(name), manifest["pending"].get(name)]
    return any(e is not None and e["sha256"] == digest for e in entries)


def read_run_file(path, *, require_manifest: bool = False) -> bytes:
    """The bytes of a run file, checked against its folder's manifest.

    Raises :class:`CorruptFileError` naming the file when it is a link, is not listed, or does
    not match its recorded sha256. Without a manifest (a folder written by an older ppl-vae, or
    a file outside a run folder) the file is returned unchecked, with a warning when
    ``require_manifest``.
    """
    path = Path(path)
    for attempt in range(4):
        data = _read_regular(path)
        manifest = _read_manifest(path.parent)
        if manifest is None:
            if require_manifest:
                warnings.warn(f"{path.parent} has no {MANIFEST_NAME} (written by an older "
                              f"ppl-vae?): {path.name} cannot be checked", stacklevel=2)
            return data
        if _matches(manifest, path.name, _sha256(data)):
            return data
        if not _other_writer(path.parent):
            break
        time.sleep(0.05 * (attempt + 1))  # the writer may be between its rename and its commit
    listed = path.name in manifest["files"] or path.name in manifest["pending"]
    raise CorruptFileError(
        f"{path} does not match its checksum in {MANIFEST_NAME}: it was changed, truncated or "
        "corrupted after ppl-vae wrote it; restore it or retrain the run" if listed else
        f"{path} is not listed in {path.parent / MANIFEST_NAME}: ppl-vae did not write it; "
        "remove it or retrain the run"
    )


def verify_folder(folder) -> dict[str, str]:
    """``{file name: "ok" | problem}`` for every file in the folder's manifest."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    if manifest is None:
        raise CorruptFileError(f"{folder} has no {MANIFEST_NAME}: nothing to check against")
    out = {}
    for name in sorted(manifest["files"]):
        try:
            read_run_file(folder / name)
            out[name] = "ok"
        except FileNotFoundError:
            out[name] = "missing"
        except CorruptFileError as exc:
            out[name] = str(exc)
    return out


# ------------------------------------------------------------------------ lock and cleanup
def _lock_owner(path: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = path.read_text().split()
        if len(text) >= 2:
            return f"process {text[0]} on {text[1]}"
    return "another process"


def _other_writer(folder: Path) -> bool:
    """Whether another process holds ``folder``'s lock now."""
    if os.path.realpath(folder) in _HELD or not (folder / LOCK_NAME).exists():
        return False
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | NOFOLLOW)
    except OSError:
        return False
    try:
        if try_lock(fd, shared=True):
            unlock(fd)
            return False
        return True
    finally:
        os.close(fd)


def _check_writer(folder: Path) -> None:
    """Raise :class:`RunLockedError` when another process holds ``folder``'s lock."""
    if _other_writer(folder):
        raise RunLockedError(
            f"{folder} is being written by {_lock_owner(folder / LOCK_NAME)}: a run folder has "
            "one writer at a time; wait for it to finish or use another folder")


@contextlib.contextmanager
def lock_run(folder):
    """Hold ``folder``'s writer lock (re-entrant within a process); removes temporaries left
    by killed writers. Raises :class:`RunLockedError` naming the process that holds it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a run folder: choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
    else:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | NOFOLLOW, RUN_FILE_MODE)
        if not try_lock(fd):
            os.close(fd)
            raise RunLockedError(
                f"{folder} is in use by {_lock_owner(folder / LOCK_NAME)}: a run folder has one "
                "writer at a time; wait for it to finish or choose another --out") from None
        set_mode(fd, RUN_FILE_MODE)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {_HOST}\n".encode())
        _HELD[key] = [fd, 1]
        clean_temporaries(folder, every_writer=True)
    try:
        yield folder
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            fd = _HELD.pop(key)[0]
            os.ftruncate(fd, 0)
            unlock(fd)
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temporaries(folder, *, every_writer: bool = False) -> list[str]:
    """Remove temporary files left in ``folder`` by killed writers: those of dead processes on
    this host, or all of them (``every_writer``, only while holding the folder's lock)."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            match = _TEMP.match(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            mine = match["host"] == _HOST
            if every_writer or (mine and not _alive(int(match["pid"]))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed.append(entry.name)
    return removed


def run_file_names(folder, names) -> list[str]:
    """A run's files present in ``folder``: ``names`` and every file of its manifest, the
    manifest last."""
    folder = Path(folder)
    try:
        listed = set((_read_manifest(folder) or {"files": {}})["files"])
    except CorruptFileError:
        listed = set()
    return [name for name in sorted(set(names) | listed) + [MANIFEST_NAME]
            if (folder / name).is_symlink() or (folder / name).is_file()]


def remove_run_files(folder, names) -> list[str]:
    """Delete a run's files (``names`` and every file of its manifest), the manifest last;
    other files in the folder are left alone."""
    removed = run_file_names(folder, names)
    for name in removed:
        (Path(folder) / name).unlink()
    return removed
