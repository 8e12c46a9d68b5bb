"""python -m rs_assistant.setup_engine --target DIR [--torch auto|cpu|cuda] [--find-links DIR] [--index-url URL]
    [--proxy URL] [--torch-index-url URL] [--python BASE_PYTHON] [--timeout SECONDS] [--retries N]
python -m rs_assistant.setup_engine --download-wheelhouse DIR [--torch auto|cpu|cuda] [--index-url URL]
    [--proxy URL] [--torch-index-url URL]

Makes (or repairs) the engine's own Python environment: a virtual environment in DIR, without the
system's site packages, holding torch and the engine's pinned packages (requirements/engine.in with
requirements/constraints.txt, the same files ``make setup`` uses). It runs under QGIS's own Python
from the unzipped plugin folder, so it is standard library only and never imports the engine.

Output (stdout, one line at a time, flushed): ``STEP k/N <what>`` when step k of N starts, log lines
(pip's own output indented by two spaces) and, last, either ``ENGINE_PYTHON <absolute path>``
(exit 0) or ``ERROR <what went wrong and what to do>`` (exit 1; 2 for a bad command line).

- ``--torch auto`` (default) picks ``cuda`` where an NVIDIA driver is present, else ``cpu``; on macOS
  PyPI's torch (with MPS) is used either way. ``cpu`` on Linux and Windows comes from the PyTorch
  CPU wheel index, ``cuda`` on Windows from the PyTorch cu126 index, ``cuda`` on Linux from PyPI.
  ``--torch-index-url URL`` picks another index for torch; ``--torch-index-url ""`` the normal one.
- ``--find-links DIR`` installs offline from a wheelhouse (``pip --no-index --find-links DIR``):
  make one with ``--download-wheelhouse DIR`` on a machine with network and the SAME system and Python
  version (X.Y) as the offline one, e.g. with that Python (pip cannot cross-build: it evaluates
  torch's and numpy's environment markers for the Python that runs it).
- Idempotent: a stamp file is written only after everything imports in the new environment, so a
  set-up that was killed or failed never looks complete; a rerun finishes the job, and a rerun with
  nothing changed only re-checks the imports (seconds, no pip). A virtual environment whose Python
  is missing or broken is repaired.
- Cancel by terminating the process at any time (SIGTERM/SIGINT; on Linux pip dies with it even on
  SIGKILL). Nothing half-installed is ever stamped complete.

Module-level helpers the plugin imports: venv_python, detect_torch_variant, disk_needed_gb,
find_base_python, is_complete.
"""

# Runs under whatever Python QGIS has (3.9 in QGIS 3.22 for Windows): keep the syntax 3.8-safe so
# that an old interpreter gets the clear "needs Python 3.11" message rather than a SyntaxError.
from __future__ import annotations

import argparse
import enum
import hashlib
import json
import ntpath
import os
import platform
import posixpath
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
PLUGIN_PARENT = PACKAGE_DIR.parent  # on PYTHONPATH when the engine runs from the plugin folder
MIN_PYTHON = (3, 11)  # the engine reads TOML with tomllib
STAMP_NAME = ".rs_assistant-setup-complete.json"
OWNER_MARK = ".rs_assistant-engine-env"  # written when this set-up made the venv: only then may it wipe it
TORCH_VARIANT_FILE = ".rs_assistant-torch-variant"
PYPI_SIMPLE = "https://pypi.org/simple/"
PYPI_TORCH_CPU = "https://download.pytorch.org/whl/cpu"
PYPI_TORCH_CU126 = "https://download.pytorch.org/whl/cu126"
VERIFY_MODULES = (
    "torch",
    "transformers",
    "fastapi",
    "uvicorn",
    "rasterio",
    "shapely",
    "pyproj",
    "huggingface_hub",
    "safetensors",
    "numpy",
    "PIL",
)
STEPS = (
    "check the Python",
    "check the free disk space",
    "create the environment",
    "install torch",
    "install the engine's packages",
    "check that everything imports",
)
EXIT_FAILED = 1
EXIT_USAGE = 2
# The environment's size once installed (Linux x86_64: the CPU environment measured 1.4 GB; PyPI's
# CUDA torch brings about 4.5 GB of NVIDIA libraries), and the free space asked for before starting
# (that, plus room for pip's downloads and unpacking).
INSTALLED_GB = {"cpu": 1.5, "cuda": 6.0}
DISK_NEEDED_GB = {"cpu": 3.0, "cuda": 12.0}


class TorchChoice(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class SetupError(Exception):
    """A failure with a one-line message that says what to do."""


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class SetupOptions:
    target: Path
    torch: TorchChoice = TorchChoice.AUTO
    find_links: Path | None = None
    index_url: str = ""
    proxy: str = ""
    torch_index_url: str | None = None  # None: the default for the variant; "": the normal index
    python: str = ""
    timeout: float | None = None
    retries: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.torch, TorchChoice):
            raise ValueError(f"--torch must be one of auto, cpu, cuda, not {self.torch!r}")
        if self.find_links is not None and not Path(self.find_links).is_dir():
            raise ValueError(f"--find-links {self.find_links}: no such folder (give the wheelhouse folder)")
        for name in ("index_url", "proxy"):
            value = getattr(self, name)
            if value and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value):
                raise ValueError(f"--{name.replace('_', '-')} {value!r} is not a URL (e.g. http://host:port)")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("--timeout must be a positive number of seconds")
        if self.retries is not None and self.retries < 0:
            raise ValueError("--retries must be 0 or more")

    @property
    def offline(self) -> bool:
        return self.find_links is not None


# --- helpers the plugin imports (pure, injectable facts) -------------------------------------------


def venv_python(target: Path, system: str | None = None) -> Path:
    """The interpreter of the virtual environment in ``target`` (``Scripts\\python.exe`` on Windows)."""
    system = system or platform.system()
    if system == "Windows":
        return Path(target) / "Scripts" / "python.exe"
    return Path(target) / "bin" / "python"


def detect_torch_variant(
    system: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[str], bool] = os.path.exists,
    environ: dict | None = None,
) -> str:
    """``"cuda"`` where an NVIDIA driver is present, else ``"cpu"`` (macOS: ``"cpu"``; PyPI's torch has MPS)."""
    system = system or platform.system()
    if system == "Darwin":
        return "cpu"
    return "cuda" if _has_nvidia_driver(system, which, exists, environ) else "cpu"


def _has_nvidia_driver(system, which, exists, environ=None) -> bool:
    environ = os.environ if environ is None else environ
    if which("nvidia-smi"):
        return True
    if system == "Windows":
        root = environ.get("SystemRoot", r"C:\Windows")
        return exists(ntpath.join(root, "System32", "nvcuda.dll"))
    return exists("/proc/driver/nvidia/version")


def disk_needed_gb(variant: str) -> float:
    """Free space (GB) the set-up asks for before it starts, for the torch variant ``cpu`` or ``cuda``."""
    return _per_variant(DISK_NEEDED_GB, variant)


def installed_gb(variant: str) -> float:
    """About how much (GB) the finished environment takes, for the torch variant ``cpu`` or ``cuda``."""
    return _per_variant(INSTALLED_GB, variant)


def _per_variant(sizes: dict, variant: str) -> float:
    try:
        return sizes[str(getattr(variant, "value", variant))]
    except KeyError:
        raise ValueError(f"unknown torch variant {variant!r}: use cpu or cuda") from None


def find_base_python(
    executable: str | None = None,
    base_prefix: str | None = None,
    system: str | None = None,
    version: tuple[int, int] | None = None,
    is_file: Callable[[str], bool] = os.path.isfile,
    which: Callable[[str], str | None] = shutil.which,
) -> str:
    """A real Python executable to make the venv with, also inside QGIS where ``sys.executable`` may be
    ``qgis-bin.exe`` or the QGIS app itself: this interpreter, else the one in its ``sys.base_prefix``,
    else ``python3.X``/``python3``/``python`` on PATH. Raises LookupError when there is none."""
    executable = sys.executable if executable is None else executable
    base_prefix = sys.base_prefix if base_prefix is None else base_prefix
    system = system or platform.system()
    major, minor = version or sys.version_info[:2]
    join = ntpath.join if system == "Windows" else posixpath.join
    basename = (ntpath if system == "Windows" else posixpath).basename(executable or "").lower()
    if executable and basename.startswith("python") and is_file(executable):
        return executable
    if system == "Windows":
        candidates = [join(base_prefix, "python.exe"), join(base_prefix, "python3.exe")]
    else:
        candidates = [join(base_prefix, "bin", f"python{major}.{minor}"), join(base_prefix, "bin", "python3")]
    for candidate in candidates:
        if base_prefix and is_file(candidate):
            return candidate
    for name in (f"python{major}.{minor}", "python3", "python"):
        found = which(name)
        if found:
            return found
    raise LookupError(
        f"no Python executable found (this process is {executable!r}, its Python lives in {base_prefix!r}): "
        "install Python 3.11 or newer and pass --python PATH"
    )


def is_complete(target: Path) -> bool:
    """True only when the set-up in ``target`` finished and verified, for the current requirement files."""
    target = Path(target)
    stamp = _read_stamp(target)
    if stamp is None or not venv_python(target).is_file():
        return False
    try:
        files = requirement_files()
    except SetupError:
        return False
    return stamp.get("key") == _stamp_key(files, stamp.get("variant", ""), _venv_version(target) or "")


# --- requirement files and the stamp --------------------------------------------------------------


def requirement_files() -> tuple[Path, Path]:
    """(engine.in, constraints.txt): inside the plugin zip in rs_assistant/requirements/, in the repository
    in requirements/."""
    for folder in (PACKAGE_DIR / "requirements", PLUGIN_PARENT / "requirements"):
        engine, constraints = folder / "engine.in", folder / "constraints.txt"
        if engine.is_file() and constraints.is_file():
            return engine, constraints
    raise SetupError(
        f"the engine's requirement files (requirements/engine.in, constraints.txt) are not in {PACKAGE_DIR} "
        f"nor {PLUGIN_PARENT}: reinstall the plugin from its zip"
    )


def _stamp_key(files: Iterable[Path], variant: str, python_version: str) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes().replace(b"\r\n", b"\n"))
        digest.update(b"\0")
    digest.update(f"{variant}\0{python_version}".encode())
    return digest.hexdigest()[:32]


def _read_stamp(target: Path) -> dict | None:
    try:
        data = json.loads((target / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_stamp(target: Path, data: dict) -> None:
    tmp = target / (STAMP_NAME + ".part")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, target / STAMP_NAME)


def _remove_stamp(target: Path) -> None:
    try:
        (target / STAMP_NAME).unlink()
    except FileNotFoundError:
        pass


def _pyvenv_cfg(target: Path) -> dict:
    values = {}
    try:
        text = (target / "pyvenv.cfg").read_text(encoding="utf-8")
    except OSError:
        return values
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().lower()] = value.strip()
    return values


def _venv_version(target: Path) -> str | None:
    """X.Y.Z of the Python the venv was made with (pyvenv.cfg's ``version`` or ``version_info``)."""
    cfg = _pyvenv_cfg(target)
    found = re.match(r"\d+\.\d+\.\d+", cfg.get("version") or cfg.get("version_info") or "")
    return found.group(0) if found else None


# --- output ---------------------------------------------------------------------------------------


def _say(line: str) -> None:
    print(line, flush=True)


def _step(k: int, what: str) -> None:
    _say(f"STEP {k}/{len(STEPS)} {what}")


# --- child processes ------------------------------------------------------------------------------

_CHILD: subprocess.Popen | None = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _child_env(opts_proxy: str = "", extra: dict | None = None) -> dict:
    """The environment for pip and the new interpreter: nothing of QGIS's Python leaks in."""
    env = dict(os.environ)
    for name in (
        "PYTHONHOME",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONEXECUTABLE",
        "__PYVENV_LAUNCHER__",
        "VIRTUAL_ENV",
        "PYTHONNOUSERSITE",
        "PYTHONSAFEPATH",
    ):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if opts_proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[name] = opts_proxy
    env.update(extra or {})
    return env


def _run_streamed(cmd: Sequence[str], env: dict) -> tuple[int, list[str]]:
    """Runs ``cmd``, echoing its output as indented log lines; returns (exit code, last lines)."""
    global _CHILD
    _say("$ " + " ".join(_quote(c) for c in cmd))
    kwargs = {}
    if sys.platform.startswith("linux"):
        kwargs["preexec_fn"] = _die_with_parent
    tail: list[str] = []
    _CHILD = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        **kwargs,
    )
    try:
        assert _CHILD.stdout is not None
        for line in _CHILD.stdout:
            line = line.rstrip()
            if line:
                _say("  " + line)
                tail.append(line)
                del tail[:-200]
        return _CHILD.wait(), tail
    finally:
        child, _CHILD = _CHILD, None
        if child.poll() is None:
            child.kill()
            child.wait()


def _quote(arg: str) -> str:
    return arg if arg and not re.search(r"\s", arg) else json.dumps(arg)


def _on_signal(signum, frame) -> None:
    raise Cancelled()


def _query(python: str, code: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-c", code],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env or _child_env(),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


# --- pip --------------------------------------------------------------------------------------------

NETWORK_MARKERS = (
    "NewConnectionError",
    "Connection refused",
    "ConnectionError",
    "Max retries exceeded",
    "ProxyError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "getaddrinfo failed",
    "No route to host",
    "Network is unreachable",
    "ConnectTimeout",
    "Read timed out",
    "SSLError",
    "Could not fetch URL",
    "timed out",
)
NOT_FOUND_MARKERS = ("No matching distribution found", "Could not find a version that satisfies")


def torch_index_for(variant: str, system: str | None = None) -> str:
    """The index torch comes from by default ("" = the normal index, PyPI or --index-url)."""
    system = system or platform.system()
    if system in ("Linux", "Windows") and variant == "cpu":
        return PYPI_TORCH_CPU
    if system == "Windows" and variant == "cuda":
        return PYPI_TORCH_CU126
    return ""


def _pip_common(opts: SetupOptions, index_url: str) -> list[str]:
    args = ["--progress-bar", "off", "--no-input", "--disable-pip-version-check", "--only-binary", ":all:"]
    if opts.offline:
        args += ["--no-index", "--find-links", str(opts.find_links)]
    elif index_url:
        args += ["--index-url", index_url]
    if opts.proxy:
        args += ["--proxy", opts.proxy]
    if opts.timeout is not None:
        args += ["--timeout", f"{opts.timeout:g}"]
    if opts.retries is not None:
        args += ["--retries", str(opts.retries)]
    return args


def _reachable(url: str, proxy: str = "", timeout: float = 10) -> bool:
    """Whether an HTTP(S) index answers at all (any HTTP status counts), through ``proxy`` if given."""
    import urllib.error
    import urllib.request

    if not url.lower().startswith(("http://", "https://")):
        return True
    handlers = [urllib.request.ProxyHandler({"http": proxy, "https": proxy})] if proxy else []
    try:
        urllib.request.build_opener(*handlers).open(urllib.request.Request(url, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def _pip_failure(rc: int, tail: list[str], opts: SetupOptions, what: str, index_url: str = "") -> SetupError:
    text = "\n".join(tail)
    last = next((line.strip() for line in reversed(tail) if line.strip().startswith("ERROR")), "")
    if "No space left on device" in text or "[Errno 28]" in text:
        return SetupError(
            f"the disk is full while installing {what}: free some space (or choose another "
            "folder for the engine's environment), then run the set-up again"
        )
    unresolved = any(m in text for m in (*NOT_FOUND_MARKERS, "ResolutionImpossible"))
    if opts.offline and unresolved:
        missing = re.search(r"(?:satisfies the requirement|Cannot install) ([A-Za-z0-9_.\-]+)", text)
        name = missing.group(1) if missing else what
        return SetupError(
            f"the wheelhouse {opts.find_links} has no wheel for {name} that fits this Python and system: "
            "rebuild it with `python -m rs_assistant.setup_engine --download-wheelhouse DIR`, run by a Python of "
            "the same version on the same kind of system"
        )
    if any(m in text for m in NETWORK_MARKERS) or (
        not opts.offline and unresolved and not _reachable(index_url or PYPI_SIMPLE, opts.proxy)
    ):
        via = f" through the proxy {opts.proxy}" if opts.proxy else ""
        return SetupError(
            f"pip could not reach the package index {index_url or PYPI_SIMPLE}{via} while installing {what} "
            "(no network, or a proxy or firewall refusing): pass --proxy URL for a proxy, --index-url URL for a "
            "local mirror, or --find-links DIR to install offline from a wheelhouse made with --download-wheelhouse"
        )
    detail = f" ({last})" if last else ""
    return SetupError(f"pip failed (exit {rc}) while installing {what}{detail}: see the log above")


def _pip_install(python: str, opts: SetupOptions, args: list[str], index_url: str, what: str) -> None:
    cmd = [python, "-m", "pip", "install", *_pip_common(opts, index_url), *args]
    rc, tail = _run_streamed(cmd, _child_env(opts.proxy))
    if rc != 0:
        raise _pip_failure(rc, tail, opts, what, index_url)


# --- the set-up -------------------------------------------------------------------------------------


def resolve_variant(choice: TorchChoice, system: str | None = None) -> str:
    system = system or platform.system()
    if choice == TorchChoice.AUTO:
        return detect_torch_variant(system)
    if choice == TorchChoice.CUDA:
        if system == "Darwin":
            raise SetupError("there is no CUDA build of torch for macOS: use --torch auto (PyPI's torch uses MPS)")
        if not _has_nvidia_driver(system, shutil.which, os.path.exists):
            raise SetupError(
                "--torch cuda was asked for but this machine has no NVIDIA driver (no nvidia-smi): install the "
                "NVIDIA driver first, or use --torch cpu (or auto)"
            )
    return choice.value


def _check_base_python(opts: SetupOptions) -> tuple[str, str]:
    """(path, version X.Y.Z) of the Python the venv is made from."""
    if opts.python:
        base = opts.python
        if not Path(base).is_file() and not shutil.which(base):
            raise SetupError(f"--python {base}: no such file")
    else:
        try:
            base = find_base_python()
        except LookupError as exc:
            raise SetupError(str(exc)) from None
    code = (
        "import sys\nv = sys.version_info\nprint('%d.%d.%d' % v[:3])\n"
        "try:\n import venv, ensurepip\nexcept ImportError:\n print('NOVENV')\n"
    )
    try:
        out = _query(base, code, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SetupError(f"cannot run the Python {base} ({exc}): pass --python PATH to a working Python 3.11+")
    lines = out.stdout.split()
    if out.returncode != 0 or not lines or not re.match(r"^\d+\.\d+\.\d+$", lines[0]):
        raise SetupError(f"{base} is not a working Python ({out.stderr.strip()[-200:]}): pass --python PATH")
    version = lines[0]
    if tuple(int(x) for x in version.split(".")[:2]) < MIN_PYTHON:
        raise SetupError(
            f"the engine needs Python 3.11 or newer but {base} is Python {version} (QGIS's own Python may be "
            "older): install Python 3.11 or 3.12 (python.org, or your system's packages) and pass "
            "--python PATH_TO_IT (in the plugin: the set-up panel's Python field)"
        )
    if "NOVENV" in lines:
        hint = " (on Debian/Ubuntu: sudo apt install python3-venv)" if platform.system() == "Linux" else ""
        raise SetupError(
            f"{base} has no venv/ensurepip module to make a virtual environment with: install it"
            f"{hint}, or pass --python PATH to another Python 3.11+"
        )
    return base, version


def _check_disk(target: Path, variant: str) -> None:
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free_gb = shutil.disk_usage(str(probe)).free / 1e9
    needed = disk_needed_gb(variant)
    _say(f"{free_gb:.1f} GB free where {target} is; about {needed:g} GB needed (torch: {variant})")
    if free_gb < needed:
        raise SetupError(
            f"only {free_gb:.1f} GB free on the disk of {target}, and the engine's environment (torch {variant}) "
            f"needs about {needed:g} GB: free some space or choose another folder for it"
        )


def _python_works(python: Path) -> bool:
    if not python.is_file():
        return False
    try:
        return _query(str(python), "import sys, encodings", timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _make_venv(target: Path, base: str, base_version: str) -> None:
    """Creates the venv, or repairs one this set-up made whose Python is missing or broken."""
    python = venv_python(target)
    exists = target.is_dir() and any(target.iterdir())
    if exists and not (target / OWNER_MARK).is_file():
        if (target / "pyvenv.cfg").is_file():
            raise SetupError(
                f"{target} is a virtual environment that this set-up did not make: choose another "
                "(empty or new) folder for the engine's environment"
            )
        raise SetupError(f"{target} is not empty and is not an engine environment: choose an empty or new folder")
    same_minor = (_venv_version(target) or "").split(".")[:2] == base_version.split(".")[:2]
    if exists and same_minor and _python_works(python):  # noqa: SIM102
        if _pyvenv_cfg(target).get("include-system-site-packages", "false").lower() == "false":
            _say(f"the environment {target} exists")
            return
    if exists and same_minor:
        _say(f"repairing the environment {target} (its Python is missing or broken)")
        cmd = [base, "-m", "venv", "--upgrade", str(target)]
    elif exists:
        _say(f"remaking the environment {target} for Python {base_version} (it was made for another Python)")
        cmd = [base, "-m", "venv", "--clear", str(target)]
    else:
        _say(f"creating the environment {target} with {base} (Python {base_version})")
        cmd = [base, "-m", "venv", str(target)]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, f"cannot create {target}") from None
    rc, tail = _run_streamed(cmd, _child_env())
    if rc != 0 or not _python_works(python):
        text = "\n".join(tail)
        if "No space left" in text or "[Errno 28]" in text:
            raise SetupError(f"the disk is full: free some space where {target} is, then run the set-up again")
        raise SetupError(
            f"could not create the virtual environment in {target} with {base} (exit {rc}): "
            "check the log above; on Debian/Ubuntu install python3-venv, elsewhere pass --python PATH"
        )
    (target / OWNER_MARK).write_text("made by python -m rs_assistant.setup_engine\n", encoding="utf-8")
    if _query(str(python), "import pip").returncode != 0:
        rc, _ = _run_streamed([str(python), "-m", "ensurepip", "--default-pip"], _child_env())
        if rc != 0:
            raise SetupError(f"the environment in {target} has no pip and ensurepip failed: see the log above")


def _os_error(exc: OSError, what: str) -> SetupError:
    if getattr(exc, "errno", None) == 28:
        return SetupError(f"{what}: the disk is full: free some space, then run the set-up again")
    return SetupError(f"{what}: {exc}")


VERIFY_CODE = """
import importlib, json, sys
bad = {}
for name in %r:
    try:
        importlib.import_module(name)
    except Exception as exc:
        bad[name] = "%%s: %%s" %% (type(exc).__name__, exc)
info = {"bad": bad, "python": "%%d.%%d.%%d" %% sys.version_info[:3]}
if "torch" not in bad:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda)
print("VERIFY " + json.dumps(info))
""" % (VERIFY_MODULES,)


def _verify(python: Path, variant: str) -> dict:
    """Everything imports and the engine's CLI starts; raises SetupError saying what is missing."""
    env = _child_env(extra={"PYTHONPATH": str(PLUGIN_PARENT)})
    try:
        out = _query(str(python), VERIFY_CODE, env=env, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SetupError(f"cannot run {python} ({exc}): run the set-up again to repair the environment")
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("VERIFY ")), "")
    if not line:
        raise SetupError(f"{python} failed to check its packages ({out.stderr.strip()[-300:]}): run the set-up again")
    info = json.loads(line[len("VERIFY ") :])
    if info["bad"]:
        names = ", ".join(f"{k} ({v})" for k, v in sorted(info["bad"].items()))
        raise SetupError(f"these packages do not import in the engine's environment: {names}: run the set-up again")
    if variant == "cuda" and not info.get("cuda") and platform.system() != "Darwin":
        raise SetupError(
            f"torch {info.get('torch')} in the environment is a CPU build although --torch cuda was "
            "asked for: pass --torch-index-url with a CUDA wheel index (e.g. "
            f"{PYPI_TORCH_CU126}) and run the set-up again"
        )
    try:
        cli = subprocess.run(
            [str(python), "-m", "rs_assistant.engine", "--help"],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SetupError(f"the engine's command line does not start ({exc}): run the set-up again")
    if cli.returncode != 0:
        raise SetupError(
            f"`python -m rs_assistant.engine --help` fails in the new environment "
            f"({cli.stderr.strip().splitlines()[-1:] or cli.returncode}): run the set-up again"
        )
    cuda = f"CUDA {info['cuda']}" if info.get("cuda") else "no CUDA"
    _say(
        f"verified: Python {info['python']}, torch {info['torch']} ({cuda}), {', '.join(VERIFY_MODULES)} import; "
        "the engine's command line starts"
    )
    return info


def _install(python: Path, opts: SetupOptions, variant: str, engine_in: Path, constraints: Path) -> None:
    target = opts.target
    torch_index = opts.torch_index_url if opts.torch_index_url is not None else torch_index_for(variant)
    previous = (target / TORCH_VARIANT_FILE).read_text().strip() if (target / TORCH_VARIANT_FILE).is_file() else ""
    _step(4, "install torch")
    source = "the wheelhouse " + str(opts.find_links) if opts.offline else (torch_index or opts.index_url or "PyPI")
    _say(f"torch ({variant}) from {source}")
    torch_args = ["--no-deps", "torch", "-c", str(constraints)]
    if previous and previous != variant:
        _say(f"replacing the {previous} build of torch with the {variant} build")
        torch_args.insert(0, "--force-reinstall")
    _pip_install(str(python), opts, torch_args, torch_index or opts.index_url, "torch")
    (target / TORCH_VARIANT_FILE).write_text(variant + "\n", encoding="utf-8")
    _step(5, "install the engine's packages")
    _pip_install(
        str(python), opts, ["-r", str(engine_in), "-c", str(constraints)], opts.index_url, "the engine's packages"
    )


def run_setup(opts: SetupOptions) -> Path:
    """The whole set-up; returns the engine's Python. Raises SetupError."""
    target = Path(opts.target).expanduser().resolve()
    opts = replace(opts, target=target)
    engine_in, constraints = requirement_files()
    _step(1, STEPS[0])
    variant = resolve_variant(opts.torch)
    base, base_version = _check_base_python(opts)
    _say(f"Python {base_version} at {base}; torch: {variant}; requirements: {engine_in.parent}")
    python = venv_python(target)
    key = _stamp_key((engine_in, constraints), variant, base_version)
    stamp = _read_stamp(target)
    done = stamp is not None and stamp.get("key") == key  # was complete: at most its interpreter needs repair
    _step(2, STEPS[1])
    if done:
        _say("the environment was completed before (stamp found): no download needed")
    else:
        _remove_stamp(target)  # from here on, nothing looks complete until verified
        _check_disk(target, variant)
    _step(3, STEPS[2])
    _make_venv(target, base, base_version)  # raises unless the venv's python works afterwards
    if done:
        _step(4, "install torch (already installed)")
        _step(5, "install the engine's packages (already installed)")
        _say("pip install skipped: the environment is complete; checking the imports")
        _step(6, STEPS[5])
        try:
            _verify(python, variant)
            return python
        except SetupError as exc:
            _say(f"the environment was complete but no longer is ({exc}); installing again")
            _remove_stamp(target)
    _install(python, opts, variant, engine_in, constraints)
    _step(6, STEPS[5])
    info = _verify(python, variant)
    _write_stamp(
        target,
        {
            "key": _stamp_key((engine_in, constraints), variant, _venv_version(target) or base_version),
            "variant": variant,
            "python": info["python"],
            "torch": info.get("torch"),
            "cuda": info.get("cuda"),
            "base_python": base,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return python


def download_wheelhouse(dest: Path, opts: SetupOptions) -> Path:
    """``pip download`` of torch and the engine's packages into ``dest``, for ``--find-links dest`` later,
    for the Python running this (same system and X.Y as the machine that installs from it)."""
    engine_in, constraints = requirement_files()
    dest = Path(dest).expanduser().resolve()
    variant = opts.torch.value if opts.torch != TorchChoice.AUTO else detect_torch_variant()
    torch_index = opts.torch_index_url if opts.torch_index_url is not None else torch_index_for(variant)
    if _query(sys.executable, "import pip").returncode != 0:
        raise SetupError(
            f"{sys.executable} has no pip: run this command with a Python that has pip "
            "(for example the engine environment's python)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "--dest", str(dest)]
    plain = replace(opts, find_links=None)
    _step(1, f"download torch ({variant}) from {torch_index or opts.index_url or 'PyPI'}")
    rc, tail = _run_streamed(
        [*base, *_pip_common(plain, torch_index or opts.index_url), "--no-deps", "torch", "-c", str(constraints)],
        _child_env(opts.proxy),
    )
    if rc != 0:
        raise _pip_failure(rc, tail, plain, "torch", torch_index or opts.index_url)
    _step(2, "download the engine's packages")
    rc, tail = _run_streamed(
        [
            *base,
            *_pip_common(plain, opts.index_url),
            "--find-links",
            str(dest),
            "-r",
            str(engine_in),
            "-c",
            str(constraints),
        ],
        _child_env(opts.proxy),
    )
    if rc != 0:
        raise _pip_failure(rc, tail, plain, "the engine's packages", opts.index_url)
    return dest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rs_assistant.setup_engine",
        description="Make (or repair) the engine's Python environment; or build an offline wheelhouse.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", type=Path, help="folder of the engine's virtual environment")
    where.add_argument(
        "--download-wheelhouse",
        type=Path,
        metavar="DIR",
        help="download the wheels for an offline set-up (--find-links DIR) into DIR",
    )
    parser.add_argument(
        "--torch",
        default="auto",
        choices=[c.value for c in TorchChoice],
        help="torch build: auto (cuda with an NVIDIA driver, else cpu), cpu or cuda",
    )
    parser.add_argument("--find-links", type=Path, help="install offline from this wheelhouse folder")
    parser.add_argument("--index-url", default="", help="package index (a mirror) instead of PyPI")
    parser.add_argument("--proxy", default="", help="HTTP(S) proxy for pip, e.g. http://proxy:3128")
    parser.add_argument(
        "--torch-index-url",
        default=None,
        help='index for torch (default: the PyTorch index for the variant; "" = the normal index)',
    )
    parser.add_argument("--python", default="", help="the Python 3.11+ to make the environment with")
    parser.add_argument("--timeout", type=float, default=None, help="pip's socket timeout in seconds")
    parser.add_argument("--retries", type=int, default=None, help="pip's retries per connection")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        sys.stdout.reconfigure(errors="replace")  # a QGIS console on Windows may not speak UTF-8
    except (AttributeError, ValueError):
        pass
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        opts = SetupOptions(
            target=args.target or Path("."),
            torch=TorchChoice(args.torch),
            find_links=args.find_links,
            index_url=args.index_url,
            proxy=args.proxy,
            torch_index_url=args.torch_index_url,
            python=args.python,
            timeout=args.timeout,
            retries=args.retries,
        )
    except ValueError as exc:
        _say(f"ERROR {exc}")
        return EXIT_USAGE
    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _on_signal)
    try:
        if args.download_wheelhouse:
            dest = download_wheelhouse(args.download_wheelhouse, opts)
            _say(f"WHEELHOUSE {dest}")
            _say(f"install from it with: python -m rs_assistant.setup_engine --target DIR --find-links {dest}")
            return 0
        python = run_setup(opts)
    except Cancelled:
        _say("ERROR the set-up was cancelled: run it again to finish (nothing half-installed is marked complete)")
        return EXIT_FAILED
    except SetupError as exc:
        _say(f"ERROR {' '.join(str(exc).split())}")
        return EXIT_FAILED
    except OSError as exc:
        _say(f"ERROR {' '.join(str(_os_error(exc, 'the set-up failed')).split())}")
        return EXIT_FAILED
    _say(f"ENGINE_PYTHON {python}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
