#!/usr/bin/env bash
# Idempotent set-up for RS Assistant on Debian 12: system packages, then the .venv.
#   bash scripts/setup.sh            (what `make setup`, `make test` and `make demo` call)
# Variables:
#   TORCH_VARIANT=cpu|cuda   cpu (default) installs torch 2.13.0's CPU wheel; cuda installs the
#                            CUDA build of the same release (set TORCH_INDEX_URL to the PyTorch
#                            CUDA wheel index you use, or leave it empty for PyPI's default build)
#   SKIP_APT=1               do not touch system packages (you installed them yourself)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

APT_PACKAGES=(python3-qgis qgis-providers xvfb python3-venv python3-pip qttools5-dev-tools default-jre-headless gdal-bin)
VENV=.venv
TORCH_VARIANT=${TORCH_VARIANT:-cpu}

# --- system packages --------------------------------------------------------------------------
if [ "${SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing system packages (${missing[*]}) and no apt-get: install them by hand, then rerun with SKIP_APT=1"
    [ "$(id -u)" = 0 ] || SUDO=sudo
    say "installing system packages: ${missing[*]}"
    log=$(mktemp)
    if ! ${SUDO:-} apt-get update -q >"$log" 2>&1; then
      grep -qi "lock" "$log" && die "the apt lock is held by another process (apt or unattended-upgrades): wait for it to finish, then rerun"
      die "apt-get update failed (no network to the Debian mirrors?): see $log"
    fi
    if ! DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -q "${missing[@]}" >"$log" 2>&1; then
      grep -qi "could not get lock\|unable to acquire" "$log" && die "the apt lock is held by another process: wait for it to finish, then rerun"
      grep -qi "unable to locate\|has no installation candidate" "$log" && die "apt cannot find some of: ${missing[*]} (is this Debian 12 with its main repository?): see $log"
      die "apt-get install failed (network?): see $log"
    fi
  fi
fi
[ -x /usr/bin/python3 ] || die "no /usr/bin/python3: install Debian's python3"
/usr/bin/python3 -c "import qgis.core" 2>/dev/null || die "QGIS's Python bindings do not import in /usr/bin/python3: install python3-qgis"

# --- virtual environment ----------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV (system site packages, for QGIS's bindings)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV" || die "could not create $VENV: install python3-venv"
fi

# pyproject.toml's extras read requirements/*.in; the stamp covers both, so a changed pin reinstalls.
stamp_key=$(cat pyproject.toml requirements/*.in requirements/constraints.txt | sha256sum | cut -c1-16)-$TORCH_VARIANT
stamp="$VENV/.installed-$stamp_key"
if [ ! -f "$stamp" ]; then
  say "installing Python dependencies into $VENV (torch: $TORCH_VARIANT)"
  pip_args=(-q --disable-pip-version-check -c requirements/constraints.txt)
  if [ "$TORCH_VARIANT" = cuda ]; then
    # The CUDA build of the pinned release; the local CPU wheel must not satisfy it.
    idx=()
    [ -n "${TORCH_INDEX_URL:-}" ] && idx=(--index-url "$TORCH_INDEX_URL")
    PIP_FIND_LINKS= "$VENV/bin/pip" install -q --no-cache-dir "${idx[@]}" "torch==2.13.0" \
      || die "could not install the CUDA build of torch 2.13.0 (set TORCH_INDEX_URL?)"
  fi
  log=$(mktemp)
  # The project itself, editable, with every extra (engine, training, distributed, dev = requirements/*.in);
  # constraints.txt keeps numpy and affine pinned and the local CPU wheel of torch satisfies torch==2.13.0.
  if ! "$VENV/bin/pip" install "${pip_args[@]}" -e ".[engine,training,distributed,dev]" >"$log" 2>&1; then
    grep -v "is ignored: it is neither" "$log" | tail -15 >&2
    grep -qi "connection\|network\|resolve" "$log" && die "pip could not reach the package index (no network?): see $log"
    die "pip install failed: see $log"
  fi
  "$VENV/bin/python" - <<'PY' || die "the installed packages do not import together (see above)"
import numpy, torch, transformers, rasterio, fastapi, uvicorn, shapely, pyproj
import importlib.metadata; importlib.metadata.version("rs-assistant")  # the editable install
import ray  # batch jobs on a Ray cluster (--ray-address)
from osgeo import gdal_array  # QGIS Processing needs it: breaks under numpy 2
assert numpy.__version__.startswith("1.24"), f"numpy {numpy.__version__} in .venv: must stay at 1.24"
PY
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
say "ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
