#!/usr/bin/env bash
# The demo: the packaged plugin in a fresh QGIS profile, the engine it starts, the demo data.
#   bash scripts/demo.sh          (what `make demo` runs after the set-up)
# With a display (DISPLAY set), QGIS opens on resources/demo/demo.qgs with the plugin's dock open.
# Without one, the same plugin runs headless (scripts/demo_headless.py) and writes out/demo.gpkg,
# out/demo_transcript.md and out/demo.png. DEMO_HEADLESS=1 forces the headless run;
# DEMO_INTERACTIVE=1 insists on QGIS's window (and fails clearly without a display).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[ -f resources/models/rsa-default/model.safetensors ] \
  || echo "demo: note: the built-in model's weights (resources/models/rsa-default) are missing; train them (2 CPU cores, 60 minutes) with: $PY -m training default --config training/recipes/default/default_v13.toml"

if [ ! -f resources/demo/demo.qgs ]; then
  QT_QPA_PLATFORM=offscreen $PY scripts/make_demo_data.py --out resources/demo || die "could not write the demo data"
fi

profile=out/demo-profile/profiles/default
rm -rf out/demo-profile
mkdir -p "$profile/python/plugins" out
zip=$($PY scripts/package.py --out out/dist)
$PY - "$zip" "$profile/python/plugins" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
echo "demo: installed $(basename "$zip") into $profile"

interactive=0
if [ "${DEMO_INTERACTIVE:-0}" = 1 ]; then
  [ -n "${DISPLAY:-}" ] || die "DEMO_INTERACTIVE=1 needs a display (DISPLAY is not set): run without it for the headless demo, or under xvfb-run"
  interactive=1
elif [ -n "${DISPLAY:-}" ] && [ "${DEMO_HEADLESS:-0}" != 1 ]; then
  interactive=1
fi

if [ $interactive = 1 ]; then
  command -v qgis >/dev/null || die "QGIS's application is not installed: apt-get install qgis (or run with DEMO_HEADLESS=1)"
  mkdir -p "$profile/QGIS"
  cat > "$profile/QGIS/QGIS3.ini" <<INI
[PythonPlugins]
rs_assistant=true
[rs_assistant]
engine_python=$(pwd)/.venv/bin/python
output_folder=$(pwd)/out
INI
  exec qgis --profiles-path "$(pwd)/out/demo-profile" --profile default --project resources/demo/demo.qgs \
    --code scripts/demo_gui_startup.py
fi
QT_QPA_PLATFORM=offscreen $PY scripts/demo_headless.py --profile "$profile" --out out ${DEMO_MODELS:+--models "$DEMO_MODELS"}
