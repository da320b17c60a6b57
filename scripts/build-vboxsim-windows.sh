#!/usr/bin/env bash
# Build VBoxManage.exe, the VBoxManage simulator (tests/vboxsim) frozen for Windows, under Wine
# with the toolchain's embeddable CPython and PyInstaller (docs/windows.md), so that
# vmwrapper.exe's VirtualBox back end can be tested under Wine as it finds VirtualBox there
# (VBOX_MSI_INSTALL_PATH). Called by the vboxsim_exe fixture (tests/helpers/wine_fixtures.py).
#
#   scripts/build-vboxsim-windows.sh OUT_DIR     → OUT_DIR/VBoxManage/VBoxManage.exe
#
# One directory, not one file: the wrapper makes some 40 VBoxManage calls per short job and a
# one-file exe unpacks itself at each; and a one-dir exe is one process, so the VM process's
# pid is the process itself. Env: WORK_DIR (default build/pyinstaller-vboxsim).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="$1"
WORK_DIR="${WORK_DIR:-build/pyinstaller-vboxsim}"
TOOLCHAIN="$(scripts/windows-toolchain.sh)"
mkdir -p "$WORK_DIR" "$OUT_DIR"
export WINEPREFIX="$TOOLCHAIN/prefix" WINEDEBUG=-all
win() { winepath -w "$1" 2>/dev/null; }

# PyInstaller wants a .py script; the simulator's launcher is the entry point.
cp tests/vboxsim/VBoxManage "$WORK_DIR/VBoxManage.py"

# Standard handles are pipes (`: |`, `| cat`): Windows Python under Wine dies at start when
# one is a file or closed. The simulator imports the wrapper's hostos from src/.
: | wine "$TOOLCHAIN/python/python.exe" -m PyInstaller \
  --noconfirm --clean --log-level WARN \
  --onedir \
  --name VBoxManage \
  --distpath "$(win "$OUT_DIR")" \
  --workpath "$(win "$WORK_DIR")" \
  --specpath "$(win "$WORK_DIR")" \
  --paths "$(win tests/vboxsim)" \
  --paths "$(win src)" \
  --hidden-import vmwrapper.hostos.winproc \
  --hidden-import vmwrapper.hostos.winnames \
  "$(win "$WORK_DIR/VBoxManage.py")" 2>&1 |
  { grep -v "could not resolve 'api-ms-win-" || true; }

exe="$OUT_DIR/VBoxManage/VBoxManage.exe"
[ -f "$exe" ] || { echo "build-vboxsim-windows: PyInstaller made no $exe" >&2; exit 1; }
version="$(: | VBOXSIM_STATE="$(win "$WORK_DIR")" wine "$exe" --version 2>&1 | tr -d '\r' | cat)"
case "$version" in
  *r161095*) echo "build-vboxsim-windows: built $exe, $version" ;;
  *) echo "build-vboxsim-windows: $exe --version said: $version" >&2; exit 1 ;;
esac
