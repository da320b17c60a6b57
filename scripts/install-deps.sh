#!/usr/bin/env bash
# Install the Debian packages the project needs, only those missing. Idempotent; needs root or sudo.
set -euo pipefail
PKGS=(
  qemu-system-x86 qemu-utils            # the QEMU back end, qemu-img
  qemu-system-arm qemu-efi-aarch64      # aarch64 guests (QEMU back end's arch table)
  busybox-static cpio                   # guest userland, initramfs
  syslinux syslinux-common mtools dosfstools   # BIOS-bootable guest disk without root or loop devices
  genisoimage                           # ISO checks in tests (images are written with pycdlib)
  python3-venv                          # the .venv
  boinc-client libboinc-app-dev g++     # interop with the real BOINC client and API
  wine wine64                           # dist/vmwrapper.exe and tests/windows (docs/windows.md);
                                        # the rest of the Windows toolchain: windows-toolchain.sh
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The boinc-client package may have started its system service: stop it (tests and
# scripts/boinc-client-run.sh start their own clients on their own data dirs and ports).
AS_ROOT=""; [ "$(id -u)" -eq 0 ] || AS_ROOT="sudo"
if command -v systemctl >/dev/null && systemctl is-active --quiet boinc-client 2>/dev/null; then
  echo "install-deps: stopping the boinc-client system service"; $AS_ROOT systemctl stop boinc-client || true
elif [ -s /var/run/boinc.pid ] && kill -0 "$(cat /var/run/boinc.pid)" 2>/dev/null; then
  echo "install-deps: stopping the boinc-client system service"; $AS_ROOT /etc/init.d/boinc-client stop >/dev/null || true
fi
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install-deps: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
# policy-rc.d keeps the boinc-client service from being started by the package.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null; $SUDO chmod +x /usr/sbin/policy-rc.d; added_policy=1
fi
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
[ "${added_policy:-0}" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
exit 0
