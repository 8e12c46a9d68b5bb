#!/usr/bin/env bash
# Compiles i18n/*.ts into i18n/*.qm with Qt's lrelease (skips those already up to date).
#   bash scripts/translations.sh     (what `make translations` calls)
set -euo pipefail
cd "$(dirname "$0")/.."
LRELEASE=$(command -v lrelease || ls /usr/lib/qt5/bin/lrelease /usr/lib/x86_64-linux-gnu/qt5/bin/lrelease 2>/dev/null | head -1 || true)
shopt -s nullglob
for ts in i18n/*.ts; do
  qm=${ts%.ts}.qm
  if [ ! -f "$qm" ] || [ "$ts" -nt "$qm" ]; then
    [ -n "$LRELEASE" ] || { echo "translations: lrelease not found: install Debian's qttools5-dev-tools" >&2; exit 1; }
    "$LRELEASE" -silent "$ts" -qm "$qm"
  fi
done
