#!/usr/bin/env bash
# Build dist/vmwrapper.exe, the standalone wrapper for Windows hosts, under Wine with the
# embeddable Windows CPython and PyInstaller (docs/windows.md). Called by `make dist-windows`.
#
#   scripts/build-dist-windows.sh [OUT_DIR]        (default OUT_DIR: dist)
#
# Env: WORK_DIR (default build/pyinstaller-windows).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-dist}"
WORK_DIR="${WORK_DIR:-build/pyinstaller-windows}"
TOOLCHAIN="$(scripts/windows-toolchain.sh)"
mkdir -p "$WORK_DIR" "$OUT_DIR"
export WINEPREFIX="$TOOLCHAIN/prefix" WINEDEBUG=-all
win() { winepath -w "$1" 2>/dev/null; }

# The embeddable Python takes sys.path from its ._pth file and ignores PYTHONPATH, and
# PyInstaller's hooks run in fresh Python processes that do not see --paths: without src/ on
# that path, --collect-submodules finds no vmwrapper and the subcommands imported by name
# are left out. So the build runs a view of the toolchain's Python (symlinks, a few ms) whose
# ._pth adds this checkout's src/; the cached toolchain stays untouched.
PYVIEW="$WORK_DIR/python"
rm -rf "$PYVIEW"
cp -rs "$TOOLCHAIN/python" "$PYVIEW"
rm -f "$PYVIEW/python313._pth"
printf 'python313.zip\n.\nLib\\site-packages\n%s\nimport site\n' "$(win src)" > "$PYVIEW/python313._pth"

# Windows Python under Wine dies at start when a standard handle is a file or closed: every
# Wine call here gets pipes (`: |` and `| cat`).
# Same collection as the Linux build (scripts/build-dist.sh); one file, as BOINC app versions
# list their files one by one; the Windows runtime hook ends the Python child with the
# bootloader the client kills.
: | wine "$PYVIEW/python.exe" -m PyInstaller \
  --noconfirm --clean --log-level WARN \
  --onefile \
  --name vmwrapper \
  --distpath "$(win "$OUT_DIR")" \
  --workpath "$(win "$WORK_DIR")" \
  --specpath "$(win "$WORK_DIR")" \
  --paths "$(win src)" \
  --collect-submodules vmwrapper \
  --collect-data vmwrapper \
  --collect-submodules rich \
  --collect-submodules qemu.qmp \
  --runtime-hook "$(win scripts/pyinstaller/rth_parent_death_windows.py)" \
  "$(win src/vmwrapper/__main__.py)" 2>&1 |
  # Windows 10 and later carry the universal C runtime these DLLs import; Wine has it built in
  { grep -v "could not resolve 'api-ms-win-" || true; }

exe="$OUT_DIR/vmwrapper.exe"
[ -f "$exe" ] || { echo "build-dist-windows: PyInstaller made no $exe" >&2; exit 1; }
version="$(: | wine "$exe" --version 2>&1 | tr -d '\r' | cat)"
# Every subcommand must be in the exe (they are imported by name).
help="$(: | wine "$exe" --help 2>&1 | cat)"
for cmd in run job spec image package lint doctor gc; do
  grep -q "^    $cmd " <<<"$help" || { echo "build-dist-windows: $exe lacks '$cmd'" >&2; exit 1; }
done
echo "build-dist-windows: built $exe ($(du -h "$exe" | cut -f1)), $version"
