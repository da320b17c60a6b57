#!/usr/bin/env bash
# Build the standalone wrapper executable dist/vmwrapper with PyInstaller (one file, no Python
# needed on the volunteer's host). Called by `make dist` after `pip install -e .[dist]`.
#
#   scripts/build-dist.sh [OUT_DIR]        (default OUT_DIR: dist)
#
# Env: PYTHON (default .venv/bin/python), WORK_DIR (default build/pyinstaller).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT_DIR="${1:-dist}"
WORK_DIR="${WORK_DIR:-build/pyinstaller}"

"$PYTHON" -c 'import PyInstaller' 2>/dev/null || {
  echo "build-dist: PyInstaller missing; run: $PYTHON -m pip install -e '.[dist]'" >&2
  exit 1
}
mkdir -p "$WORK_DIR" "$OUT_DIR"

# Subcommands are imported by name (cli/main.py) and some modules import lazily, so collect
# every vmwrapper submodule; guest/ files are package data the image builder copies into images.
# rich loads its unicode tables by name, so collect its submodules too.
"$PYTHON" -m PyInstaller \
  --noconfirm --clean --log-level WARN \
  --onefile \
  --name vmwrapper \
  --distpath "$OUT_DIR" \
  --workpath "$WORK_DIR" \
  --specpath "$WORK_DIR" \
  --paths src \
  --collect-submodules vmwrapper \
  --collect-data vmwrapper \
  --collect-submodules rich \
  --collect-submodules qemu.qmp \
  --runtime-hook "$PWD/scripts/pyinstaller/rth_parent_death.py" \
  "$PWD/src/vmwrapper/__main__.py"

exe="$OUT_DIR/vmwrapper"
# Smoke test with an empty environment: no PATH, no Python variables.
version="$(env -i "$exe" --version)"
echo "build-dist: built $exe ($(du -h "$exe" | cut -f1)), $version"
