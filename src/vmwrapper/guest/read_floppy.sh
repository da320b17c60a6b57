#!/bin/sh
# read_floppy.sh - guest side of vboxwrapper's floppyio contextualization (busybox sh).
#
# Usage: read_floppy.sh [--env] [DEVICE]      (DEVICE: $VMWRAPPER_FLOPPY, else /dev/fd0)
#
# The host writes a 28672-byte image: bytes 0..14334 carry the message (NUL-padded), byte
# 28670 is 0x01 when a message is waiting. Prints the message (init_data.xml, or the CERN
# NAME=value lines) on stdout. With --env, prints the CERN pairs as shell assignments
# (`BOINC_USERID='42'`), quoted so that `eval "$(read_floppy.sh --env)"` is safe.
# Exit codes: 0 message printed, 1 no message (flag not set), 2 no readable device.
set -u

FLAG_OFFSET=28670
BUFFER_SIZE=14335

as_env=0
if [ "${1:-}" = "--env" ]; then
    as_env=1
    shift
fi
dev="${1:-${VMWRAPPER_FLOPPY:-/dev/fd0}}"

case "$dev" in
    /dev/fd*)
        if [ ! -r "$dev" ]; then
            # Debian kernels build the floppy driver as a module.
            modprobe floppy 2>/dev/null
            i=0
            while [ ! -r "$dev" ] && [ "$i" -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
        fi
        ;;
esac
if [ ! -r "$dev" ]; then
    echo "read_floppy: no readable floppy device $dev" >&2
    exit 2
fi

# Read the whole image once: the floppy driver reads whole tracks anyway.
tmp="${TMPDIR:-/tmp}/read_floppy.$$"
trap 'rm -f "$tmp"' EXIT
if ! dd if="$dev" of="$tmp" bs=28672 count=1 2>/dev/null; then
    echo "read_floppy: cannot read $dev" >&2
    exit 2
fi
flag=$(dd if="$tmp" bs=1 skip="$FLAG_OFFSET" count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
if [ "$flag" != "01" ]; then
    echo "read_floppy: no message from the host on $dev (flag byte is '${flag:-none}')" >&2
    exit 1
fi

if [ "$as_env" -eq 0 ]; then
    # The payload is text; the NUL padding after it is dropped.
    head -c "$BUFFER_SIZE" "$tmp" | tr -d '\000'
    exit 0
fi

head -c "$BUFFER_SIZE" "$tmp" | tr -d '\000' | while IFS= read -r line || [ -n "$line" ]; do
    name=${line%%=*}
    [ "$name" = "$line" ] && continue
    case "$name" in
        BOINC_[A-Z_]*) ;;
        *) continue ;;
    esac
    case "$name" in *[!A-Z_]*) continue ;; esac
    value=${line#*=}
    # Single quotes: close, escaped quote, reopen.
    quoted=$(printf '%s' "$value" | sed "s/'/'\\\\''/g")
    printf "%s='%s'\n" "$name" "$quoted"
done
