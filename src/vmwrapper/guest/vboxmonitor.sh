#!/bin/sh
# vboxmonitor.sh - BOINC's vboxmonitor in busybox sh: copy stdin to stdout and, line by line,
# to VirtualBox's guest log port 0x504, where each line becomes a "Guest Log: <line>" entry in
# VBox.log, which the wrapper copies into stderr.txt.
#
# Usage: some_command 2>&1 | /opt/vmwrapper/vboxmonitor.sh
#
# Under QEMU the console (ttyS0) already carries every line to the wrapper; this is for
# VirtualBox, whose VMs the wrapper runs without a serial port (as vboxwrapper does).
# Needs root (writes /dev/port) and a VirtualBox guest (its VMMDev device owns the port);
# otherwise it only copies stdin to stdout. VMWRAPPER_LOG_PORT (decimal) forces a port, e.g.
# for a test with QEMU's isa-debugcon device.
set -u
port="${VMWRAPPER_LOG_PORT:-1284}"   # 0x504

to_port() {
    # /dev/port writes byte i of a buffer to port+i, so write one byte per dd, each at `port`.
    od -An -v -tu1 | tr -s ' \t' '\n\n' | while read -r byte; do
        [ -n "$byte" ] || continue
        # shellcheck disable=SC2059 # the format is the byte, as an octal escape
        printf "\\$(printf '%03o' "$byte")" |
            dd of=/dev/port bs=1 seek="$port" count=1 conv=notrunc 2>/dev/null || return 1
    done
}

is_virtualbox_guest() {
    # VirtualBox's VMMDev PCI device (80ee:cafe) owns port 0x504; never poke ports elsewhere.
    for dev in /sys/bus/pci/devices/*; do
        [ "$(cat "$dev/vendor" 2>/dev/null)" = "0x80ee" ] &&
            [ "$(cat "$dev/device" 2>/dev/null)" = "0xcafe" ] && return 0
    done
    return 1
}

if [ ! -w /dev/port ] || { [ -z "${VMWRAPPER_LOG_PORT:-}" ] && ! is_virtualbox_guest; }; then
    exec cat
fi
while IFS= read -r line || [ -n "$line" ]; do
    printf '%s\n' "$line"
    printf '%s\n' "$line" | to_port
done
