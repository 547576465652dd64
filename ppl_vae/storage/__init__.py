"""Run-folder storage: atomic files, the sha256 manifest and the one-writer lock.

It sits low in the data flow (after ``data``): training writes its checkpoints with it, and
every later stage reads and writes run files through it. See :mod:`ppl_vae.storage.files`
(atomic writes, the manifest, the lock) and :mod:`ppl_vae.storage.locking` (the portable
file-lock primitives).
"""

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
    remove_run_files,
    run_file_names,
    verify_folder,
    write_bytes,
)

__all__ = [
    "RUN_FILE_MODE", "MANIFEST_NAME", "LOCK_NAME", "CorruptFileError", "DiskFullError",
    "RunLockedError", "write_bytes", "atomic_write", "read_run_file", "verify_folder",
    "lock_run", "clean_temporaries", "remove_run_files", "run_file_names",
]
