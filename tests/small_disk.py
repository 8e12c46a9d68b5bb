"""A folder on a disk of a chosen size (a tmpfs mounted for the test), for "the disk is full" cases.

Mounting needs root, which CI and the project's machines have; elsewhere the test is skipped and
says why.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(folder: Path, size_bytes: int) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    size_kb = max(4, size_bytes // 1024)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {size_kb} kB tmpfs for a full-disk case: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
