"""Checks of a data file made before it is read whole: the CSV layouts that would otherwise
read as other data, and ``.npz`` archives whose arrays would not fit in memory."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["check_csv_layout", "check_npz_fits", "available_memory"]


def check_csv_layout(path: Path, frame, header: bool) -> None:
    """The CSV mistakes that would otherwise read as other data: a header and no rows, another
    separator (a decimal-comma locale's ``;``), a comma at the end of every line."""
    if len(frame) == 0:
        raise ValueError(f"{path} has a header line and no data rows; add rows of numbers")
    with open(path, newline="") as handle:
        lines = [handle.readline() for _ in range(2)]
    separator = next((sep for sep in (";", "\t") if any(sep in line for line in lines)), None)
    if separator is not None:
        kind = "a decimal-comma locale's CSV" if separator == ";" else "a TSV"
        raise ValueError(f"{path}: its lines are separated by {separator!r} ({kind}?); "
                         "ppl-vae reads comma-separated numbers with '.' decimals: "
                         "write it with sep=',' and decimal='.'")
    last = frame.columns[-1]
    unnamed = not header or str(last).startswith("Unnamed:")
    if frame.shape[1] > 1 and unnamed and bool(frame[last].isna().all()):
        raise ValueError(f"{path}: every line ends with a comma (an empty last column); remove "
                         "the trailing commas")


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}


def available_memory() -> int | None:
    """Bytes of memory free now (Linux, and systems with ``SC_AVPHYS_PAGES``), else None."""
    if os.name != "posix" or "SC_AVPHYS_PAGES" not in os.sysconf_names:
        return None
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_npz_fits(path: Path) -> None:
    """Refuse an ``.npz`` whose arrays ``x`` and ``y`` would not fit in the free memory, from
    the shapes and dtypes in their ``.npy`` headers (and the zip's sizes), before anything is
    decompressed: a compressed file of a few MB can hold arrays of hundreds of GB."""
    free = available_memory()
    if free is None or not zipfile.is_zipfile(path):
        return
    needed = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.filename not in ("x.npy", "y.npy"):
                continue
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    read = _NPY_HEADERS.get(version)
                    if read is None:
                        continue  # a newer header: np.load reads it as it is
                    shape, _, dtype = read(member)
                except ValueError:
                    continue  # not an array header: np.load says so below
            needed += max(info.file_size, int(np.prod(shape, dtype=np.float64)) * dtype.itemsize)
    if needed > free:
        raise ValueError(f"{path}: its arrays take {needed / 2**30:.1f} GiB once "
                         f"decompressed, more than the {free / 2**30:.1f} GiB of free memory; "
                         "pass the data as .npy shards through DiskData (see docs/scaling.md)")
