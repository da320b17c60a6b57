# Shell functions shared by the guest scripts (busybox sh). Sourced, not run.
# Under QEMU the host's shared directory is a virtio-9p export, or (the "serial" transport)
# a file service in the wrapper behind a virtio-serial port named org.boinc.vmwrapper.shared.
# QEMU refuses every snapshot while a 9p export is mounted in the guest, so the guest keeps
# /root/shared on its own RAM disk (inside every snapshot) and talks to the host share only
# in short "sync windows" (a 9p mount, or one exchange on the port: never blocks a snapshot):
#   pull      once at start: host -> /root/shared
#   push      about once a second, only when something changed: new or changed regular files
#             go to the host as a temp name, then a rename (the host never sees half a file),
#             with the guest's modification time: the wrapper tells a second push of one
#             version of a trigger file (an echo) from a new write of the same text by it
#   final     after boinc_app exits: every file created or changed since the pull, again, so
#             the host's copy is right even after a restore from an older snapshot
# Symlinks are never copied to the host, deletions are not propagated, and files the host
# adds after the pull are not seen (the job's inputs are all there before the VM starts).
# When the share is the whole slot (share_slot_dir), the host puts a list of its own files'
# name patterns in .vmwrapper-exclude (VM disks and snapshots, logs, sockets, the client's
# files): those are neither pulled nor pushed.

WORK=/root/shared                # what the app sees
HOSTMNT=/run/vmwrapper/host      # where a sync window mounts the host share
STATE=/run/vmwrapper             # sync state (lists of "mtime size path", see share_list)
NINEP_OPTS=trans=virtio,version=9p2000.L,msize=262144,cache=none
TMP_PREFIX=.vmwrapper-tmp.
EXCLUDE_FILE=.vmwrapper-exclude

# Is the top-level name $1 one of the host's own files (see $STATE/exclude)?
excluded() {
    [ -s "$STATE/exclude" ] || return 1
    while IFS= read -r pattern; do
        [ -n "$pattern" ] || continue
        # shellcheck disable=SC2254 # the pattern is meant to match as a glob
        case "$1" in $pattern) return 0 ;; esac
    done < "$STATE/exclude"
    return 1
}

has_pci_device() { # VENDOR DEVICE (hex, as in sysfs: 0x80ee 0xcafe)
    for dev in /sys/bus/pci/devices/*; do
        [ "$(cat "$dev/vendor" 2>/dev/null)" = "$1" ] &&
            [ "$(cat "$dev/device" 2>/dev/null)" = "$2" ] && return 0
    done
    return 1
}

# Under VirtualBox (its guest PCI device 80ee:cafe is there) the ERROR and DONE markers also
# go to the VirtualBox log, where they appear as "Guest Log:" lines: vboxmonitor.sh writes
# them byte by byte to I/O port 0x504, as BOINC's vboxmonitor does. Only those two: one
# process per byte is too slow for more (give the VM a serial port for the whole console).
# `vmwrapper.vboxlog` on the kernel command line turns it on anywhere (a test captures port
# 0x504 with QEMU's isa-debugcon).
VBOX_LOG=0
if [ -w /dev/port ]; then
    if has_pci_device 0x80ee 0xcafe || grep -q 'vmwrapper.vboxlog' /proc/cmdline 2>/dev/null; then
        VBOX_LOG=1
    fi
fi
vbox_log() {
    [ "$VBOX_LOG" = 1 ] && [ -x /opt/vmwrapper/vboxmonitor.sh ] || return 0
    printf '%s\n' "$1" | VMWRAPPER_LOG_PORT=1284 /opt/vmwrapper/vboxmonitor.sh > /dev/null
}

marker() { # LINE: to the console and, under VirtualBox, to its log
    echo "$1"
    vbox_log "$1"
}

say() { echo "VMWRAPPER_GUEST: $*"; }

# With `vmwrapper.trace` on the kernel command line, print the uptime at each boot step.
TRACE=0
grep -q 'vmwrapper.trace' /proc/cmdline 2>/dev/null && TRACE=1
trace() { [ "$TRACE" = 1 ] && say "trace $(cut -d' ' -f1 /proc/uptime) $*"; }

fail() {
    marker "VMWRAPPER_GUEST_ERROR: $*"
    panic_or_power_off
}

power_off() {
    sync
    poweroff -f
    sleep 30
}

has_pvpanic() {
    ls /sys/bus/platform/drivers/pvpanic-mmio 2>/dev/null | grep -q QEMU0001 ||
        ls /sys/bus/pci/drivers/pvpanic-pci 2>/dev/null | grep -q :
}

panic_or_power_off() {
    # With a pvpanic device (QEMU) a panic makes QEMU exit non-zero, so the wrapper sees a
    # crash with the error line above; without one (VirtualBox) power off instead.
    sync
    if has_pvpanic; then
        echo 1 > /proc/sys/kernel/sysrq
        echo c > /proc/sysrq-trigger
    fi
    poweroff -f
    sleep 30
}

share_tags() {
    for tag in /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag; do
        [ -r "$tag" ] && tr -d '\000' < "$tag" && echo
    done
}

share_has_9p_tag() { share_tags | grep -qx "$1"; }

# QEMU refuses a 9p mount (EBUSY) while it is saving a snapshot: a window that collides with
# a checkpoint must wait for it, not fail the job. Tries every 0.25 s for up to ~30 s.
MOUNT_TRIES=120
share_mount() { # TAG DIR
    mkdir -p "$2" || return 1
    tries=1
    until mount -t 9p -o "$NINEP_OPTS" "$1" "$2" 2>/dev/null; do
        if [ "$tries" -ge "$MOUNT_TRIES" ]; then
            mount -t 9p -o "$NINEP_OPTS" "$1" "$2"  # once more, with its error on the console
            return
        fi
        tries=$((tries + 1))
        sleep 0.25
    done
}

# "date time.ns tz size inode ./path" for every regular file under $WORK (never symlinks),
# oldest first: files reach the host in the order they were last written, so a trigger file
# the app writes after its results (e.g. a completion trigger) arrives after them. File
# times advance in clock ticks; within one tick the newer inode (tmpfs numbers them in
# creation order) goes last. The first line, "date time.ns tz -1 0 ./", is the moment of the
# listing (a stamp file's mtime: the same clock and resolution as the files').
share_list() {
    touch "$STATE/stamp"
    stat -c '%y -1 0 ./' "$STATE/stamp"
    (cd "$WORK" && find . -type f ! -name "$TMP_PREFIX*" -exec stat -c '%y %s %i %n' {} + 2>/dev/null) | sort -k1,2 -k5,5n
}

# --- the serial transport: docs/shared-transport.md has the protocol ----------------------
SERIAL_NAME=org.boinc.vmwrapper.shared
SERIAL_PORT=""   # /dev/vportNpM when the VM has the file service's port
# Seconds to wait for a reply. The host answers GO, OK and HELLO at once; a restore from a
# snapshot taken mid-window leaves the guest waiting for a reply the new QEMU's file service
# never sends, so this bounds that wait before the next window puts both sides in step.
SERIAL_WAIT=5
PULL_WAIT=600  # the host packs the whole share before it answers a PULL

find_serial_port() {
    for port in /sys/class/virtio-ports/*; do
        if [ "$(cat "$port/name" 2>/dev/null)" = "$SERIAL_NAME" ]; then
            SERIAL_PORT=/dev/${port##*/}
            return 0
        fi
    done
    return 1
}

# Open a window on fd 3 and agree on where the stream is: HELLO with a fresh nonce, and skip
# whatever comes before its echo (after a restore from a snapshot, or a timed-out window,
# replies meant for an older window can still be on their way).
serial_open() {
    exec 3<>"$SERIAL_PORT" || return 1
    nonce="$(cut -d' ' -f1 /proc/uptime | tr -d .)x$$x$RANDOM"
    # the newline first ends whatever partial line an interrupted window left on the host
    printf '\nHELLO %s\n' "$nonce" >&3
    while IFS= read -r -t "$SERIAL_WAIT" reply <&3; do
        [ "$reply" = "HELLO $nonce" ] && return 0
    done
    exec 3>&-
    return 1
}

serial_close() { exec 3>&-; }

# Read one reply line: 0 when it is EXPECTED; 1 for another reply (ERR: the stream is still
# in step); 2 for none (the stream may be out of step: end the window).
serial_reply() { # EXPECTED
    IFS= read -r -t "$SERIAL_WAIT" reply <&3 || { say "share channel: no reply"; return 2; }
    [ "$reply" = "$1" ] && return 0
    say "share channel: $reply"
    return 1
}

# Exactly N bytes from the port to stdout: dd with fullblock reads whole blocks and never
# past the last (busybox head -c copies byte by byte: 15 times slower under TCG).
serial_read_exact() { # N
    blocks=$(($1 / 65536))
    rest=$(($1 % 65536))
    {
        [ "$blocks" -eq 0 ] || dd bs=65536 count="$blocks" iflag=fullblock 2>/dev/null
        [ "$rest" -eq 0 ] || dd bs="$rest" count=1 iflag=fullblock 2>/dev/null
    } <&3
}

serial_pull() {
    serial_open || return 1
    printf 'PULL\n' >&3
    IFS= read -r -t "$PULL_WAIT" reply <&3 || { serial_close; return 1; }
    case "$reply" in
        "DATA "*) ;;
        *) say "share channel: $reply"; serial_close; return 1 ;;
    esac
    serial_read_exact "${reply#DATA }" | tar -xf - -C "$WORK"
    rc=$?
    serial_close
    return $rc
}

# One file (./path below $WORK): a copy first, so the size sent is the size of what is sent
# while the app goes on writing; the mtime is the original's as listed before.
serial_put() {
    src="$WORK/$1"
    stamp=$(stat -c '%Y %y' "$src") || return 1
    frac=${stamp#* * }
    case "$frac" in
        *.*) frac=${frac#*.}; frac=${frac%% *} ;;
        *) frac=0 ;;
    esac
    cp "$src" "$STATE/xfer" || return 1
    size=$(stat -c %s "$STATE/xfer")
    hex=$(printf %s "${1#./}" | od -An -tx1 -v | tr -d ' \n')
    printf 'PUT %s %s.%s %s\n' "$size" "${stamp%% *}" "$frac" "$hex" >&3 || return 2
    serial_reply GO || return
    cat "$STATE/xfer" >&3 || return 2
    printf 'END %s\n' "$hex" >&3 || return 2  # the trailer: these bytes were this file
    serial_reply OK
}

# A file whose transfer left the stream out of step (no reply: bytes lost on the way, or the
# host gone) is sent again once in a new window: by the time our wait for a reply ran out, the
# host has dropped the transfer and listens for HELLO (its PAYLOAD_IDLE is shorter than
# SERIAL_WAIT). A second failure ends this push; the caller retries later.
serial_push_files() { # LIST
    serial_open || return 1
    rc=0
    while IFS= read -r path; do
        [ -f "$WORK/$path" ] && [ ! -L "$WORK/$path" ] || continue
        top=${path#./}
        excluded "${top%%/*}" && continue  # never over the host's own files
        serial_put "$path"
        step=$?
        if [ $step -ge 2 ]; then
            say "share channel: out of step after $path; sending it again in a new window"
            serial_close
            serial_open || { rc=1; break; }
            serial_put "$path"
            step=$?
        fi
        case $step in
            0) ;;
            1) rc=1 ;;            # refused (ERR): the next file may go
            *) rc=1; break ;;     # out of step again: the caller's next window retries
        esac
    done < "$1"
    serial_close
    rm -f "$STATE/xfer"
    return $rc
}

since() { # UPTIME: seconds since then, for the log lines
    awk -v a="$1" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.2f", b - a }'
}

share_pull() {
    pull_start=$(cut -d' ' -f1 /proc/uptime)
    if [ -n "$SERIAL_PORT" ]; then
        serial_pull || return 1
        # the host serves its exclusion list (share_slot_dir) for us, not for the app
        rm -f "$STATE/exclude"
        [ -f "$WORK/$EXCLUDE_FILE" ] && mv "$WORK/$EXCLUDE_FILE" "$STATE/exclude"
        share_list > "$STATE/pulled"
        cp "$STATE/pulled" "$STATE/pushed"
        say "pulled $(wc -l < "$STATE/pulled") files from the host into $WORK in $(since "$pull_start") s (serial)"
        return 0
    fi
    share_mount shared "$HOSTMNT" || return 1
    rm -f "$STATE/exclude"
    [ -f "$HOSTMNT/$EXCLUDE_FILE" ] && cp "$HOSTMNT/$EXCLUDE_FILE" "$STATE/exclude"
    rc=0
    if [ -s "$STATE/exclude" ]; then
        for entry in "$HOSTMNT"/* "$HOSTMNT"/.[!.]* "$HOSTMNT"/..?*; do
            [ -e "$entry" ] || [ -L "$entry" ] || continue
            excluded "${entry##*/}" && continue
            cp -a "$entry" "$WORK/" || rc=1
        done
    else
        cp -a "$HOSTMNT/." "$WORK/" || rc=1
    fi
    umount "$HOSTMNT"
    [ $rc -eq 0 ] || return 1
    share_list > "$STATE/pulled"
    cp "$STATE/pulled" "$STATE/pushed"
    say "pulled $(wc -l < "$STATE/pulled") files from the host into $WORK in $(since "$pull_start") s (9p)"
}

# Paths (./x) of the files in list NEW that are not in list OLD (new, or another mtime, size
# or inode), or whose mtime is not older than OLD's listing: file times advance in clock ticks,
# so a file rewritten in the tick OLD was taken may show the same time and size.
share_changed() { # OLD NEW
    awk -v old_file="$1" '
        FILENAME == old_file { if ($4 == -1) taken = $1 " " $2; else seen[$0] = 1; next }
        $4 == -1 { next }
        !($0 in seen) || ($1 " " $2) >= taken { sub(/^[^ ]+ [^ ]+ [^ ]+ [^ ]+ [^ ]+ /, ""); print }
    ' "$1" "$2"
}

# Copy the files named in $1 (one ./path a line) to the host in one window.
share_push_files() {
    [ -s "$1" ] || return 0
    if [ -n "$SERIAL_PORT" ]; then
        serial_push_files "$1"
        return
    fi
    share_mount shared "$HOSTMNT" || return 1
    rc=0
    while IFS= read -r path; do
        [ -f "$WORK/$path" ] && [ ! -L "$WORK/$path" ] || continue
        top=${path#./}
        excluded "${top%%/*}" && continue  # never over the host's own files
        dir=${path%/*}
        base=${path##*/}
        mkdir -p "$HOSTMNT/$dir" &&
            cp "$WORK/$path" "$HOSTMNT/$dir/$TMP_PREFIX$base" &&
            touch -r "$WORK/$path" "$HOSTMNT/$dir/$TMP_PREFIX$base" &&
            mv -f "$HOSTMNT/$dir/$TMP_PREFIX$base" "$HOSTMNT/$path" || rc=1
    done < "$1"
    umount "$HOSTMNT" || rc=1
    return $rc
}

share_push_changed() {
    share_list > "$STATE/now"
    share_changed "$STATE/pushed" "$STATE/now" > "$STATE/changed"
    # The list was taken before copying: a file written during the copy has a newer mtime
    # than recorded, so the next cycle pushes it again.
    if share_push_files "$STATE/changed"; then
        mv "$STATE/now" "$STATE/pushed"
    else
        say "push to the host failed; will retry"
    fi
}

share_agent_loop() {
    while [ ! -e "$STATE/agent.stop" ]; do
        # A background sleep, so share_agent_stop can cut it short (the agent is then never
        # inside a window when it sees the stop flag).
        sleep 1 &
        echo $! > "$STATE/agent.sleep"
        wait $!
        [ -e "$STATE/agent.stop" ] && break
        share_push_changed
    done
}

share_agent_start() {
    rm -f "$STATE/agent.stop"
    # stderr off: the shell would report the killed sleep ("Terminated"); failures are
    # reported with `say` on stdout.
    share_agent_loop 2>/dev/null &
    AGENT_PID=$!
}

share_agent_stop() {
    touch "$STATE/agent.stop"
    kill "$(cat "$STATE/agent.sleep" 2>/dev/null)" 2>/dev/null
    wait "$AGENT_PID" 2>/dev/null
}

share_final_push() {
    share_list > "$STATE/now"
    # Everything that differs from what was pulled, whatever was pushed before.
    share_changed "$STATE/pulled" "$STATE/now" > "$STATE/changed"
    # A failed window is tried again (each ends with the stream back in step); the last
    # results are what the task is for.
    tries=1
    until share_push_files "$STATE/changed"; do
        [ $tries -lt 3 ] || return 1
        tries=$((tries + 1))
        say "final push to the host failed; trying again ($tries of 3)"
    done
    say "pushed $(wc -l < "$STATE/changed") files to the host"
}
