"""An offline wheelhouse of the engine's packages (torch CPU), built once per machine and shared by tests.

    from tests.wheelhouse import engine_wheelhouse
    folder = engine_wheelhouse()      # then: python -m rs_assistant.setup_engine --find-links folder

It is made with ``python -m rs_assistant.setup_engine --download-wheelhouse`` (``pip download`` of
requirements/engine.in with constraints.txt, using this machine's pip configuration: on the CI
machines torch's CPU wheel and the rest come from local mirrors) into
``~/.cache/rs_assistant-tests/wheelhouse-<hash>`` (``RS_ASSISTANT_TEST_CACHE`` overrides the folder).
The hash covers the requirement files and the Python version, so a changed pin makes a new one.
A lock file keeps two processes from building it at once; ``.complete`` is written last, so a build
that was killed is redone, never used half-made.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = (ROOT / "requirements" / "engine.in", ROOT / "requirements" / "constraints.txt")
COMPLETE = ".complete"


def cache_dir() -> Path:
    return Path(os.environ.get("RS_ASSISTANT_TEST_CACHE") or Path.home() / ".cache" / "rs_assistant-tests")


def wheelhouse_key() -> str:
    digest = hashlib.sha256()
    for path in REQUIREMENTS:
        digest.update(path.read_bytes())
    digest.update(f"{sys.version_info[:2]} {sys.platform}".encode())
    return digest.hexdigest()[:16]


def engine_wheelhouse(timeout: float = 1800) -> Path:
    """The folder of wheels (built on the first call on this machine; minutes, then instant)."""
    folder = cache_dir() / f"wheelhouse-{wheelhouse_key()}"
    if (folder / COMPLETE).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here for the first one's build
        if (folder / COMPLETE).is_file():
            return folder
        partial = folder.parent / f"{folder.name}.part"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "rs_assistant.setup_engine",
            "--download-wheelhouse",
            str(partial),
            "--torch",
            "cpu",
            "--torch-index-url",
            "",
        ]  # "": torch from pip's configured indexes/find-links
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"could not build the test wheelhouse ({' '.join(cmd)}):\n{out.stdout[-3000:]}")
        (partial / COMPLETE).write_text("complete\n")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder
