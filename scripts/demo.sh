#!/usr/bin/env bash
# `make demo`: build the guest image and run examples/hello in a real VM, explaining each step.
# `make demo` has already installed the Debian packages (scripts/install-deps.sh) and the .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
EXAMPLE=examples/hello
IMAGE=$EXAMPLE/vm_image_1.vdi

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
say() { printf '    %s\n' "$*"; }
started=$SECONDS

step "What this demo does"
say "examples/hello is a BOINC app version for a VM app (version.xml, vbox_job.xml,"
say "boinc_app, templates). Its VM image is not in git: we build it from Debian packages,"
say "then run one job through vmwrapper, as the BOINC client would, in a real QEMU VM."
if grep -qE '\b(vmx|svm)\b' /proc/cpuinfo && [ -w /dev/kvm ]; then
    say "This host has hardware virtualization: QEMU will try KVM (fast), else TCG."
else
    say "No usable KVM here (no vmx/svm flag): QEMU emulates the CPU (TCG). That works,"
    say "just slower: about 10-15 s per VM boot instead of about 1-2 s."
fi

step "1/2  Build the guest image -> $IMAGE"
say "vmwrapper image build: Debian's kernel (apt-get download, unpacked with dpkg-deb, never"
say "installed here) + busybox-static + our boot script, in an initramfs booted by syslinux"
say "from a small FAT16 disk, converted to VDI. The first build takes about a minute (the"
say "kernel package is 70 MB); after that it comes from ~/.cache/vmwrapper in a second."
$BIN/vmwrapper image build -o "$IMAGE"
$BIN/vmwrapper image info "$IMAGE" | sed 's/^/    /'

step "2/2  Run the job: examples/hello reads shared/in, writes shared/out"
workdir=$(mktemp -d "${TMPDIR:-/tmp}/vmwrapper-demo.XXXXXX")
if $BIN/vmwrapper job --help >/dev/null 2>&1; then
    say "vmwrapper job stages the app version into a BOINC data directory ($workdir),"
    say "starts the wrapper in a slot and plays the BOINC client's part. The wrapper boots the"
    say "VM; inside it our boot script copies shared/ in, runs boinc_app, copies results out"
    say "and powers off. Guest console lines appear in the wrapper's log as 'Guest Log:'."
    status=0
    $BIN/vmwrapper job "$EXAMPLE" --workdir "$workdir" --keep-slot || status=$?
    for log in "$workdir"/slots/*/stderr.txt; do
        [ -f "$log" ] || continue
        step "The wrapper's log (slots/N/stderr.txt, what BOINC keeps as the task's stderr)"
        sed 's/^/    | /' "$log"
    done
    if [ -f "$workdir/outputs/out" ]; then
        step "The job's output file (shared/out, copied back by the client stand-in)"
        sed 's/^/    | /' "$workdir/outputs/out"
    fi
else
    say "'vmwrapper job' is not available in this checkout yet, so the demo boots the same"
    say "image with plain QEMU: a qcow2 overlay over the VDI, the shared directory as the"
    say "virtio-9p share 'shared', the serial console in a file."
    mkdir -p "$workdir/shared"
    cp "$EXAMPLE/hello_app_1.sh" "$workdir/shared/boinc_app"
    cp "$EXAMPLE/inputs/in" "$workdir/shared/in"
    chmod +x "$workdir/shared/boinc_app"
    qemu-img create -q -f qcow2 -b "$PWD/$IMAGE" -F vdi "$workdir/overlay.qcow2"
    status=0
    timeout 300 qemu-system-x86_64 -accel tcg -m 256 -nodefaults -display none -no-reboot \
        -drive "file=$workdir/overlay.qcow2,if=ide,format=qcow2" \
        -virtfs "local,path=$workdir/shared,mount_tag=shared,security_model=none" \
        -serial "file:$workdir/console.log" \
        -device pvpanic -action panic=exit-failure || status=$?
    step "The guest's console (what the wrapper would log as 'Guest Log:' lines)"
    sed 's/^/    | /' "$workdir/console.log"
    if [ -f "$workdir/shared/out" ]; then
        step "shared/out, written by boinc_app inside the VM"
        sed 's/^/    | /' "$workdir/shared/out"
    fi
fi

step "Done in $((SECONDS - started)) s (exit status $status); files kept in $workdir"
exit "$status"
