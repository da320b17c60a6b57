#!/bin/sh
# boinc_app of the hello example: runs inside the VM, in /root/shared, as its cwd.
# Whatever it prints goes to the VM's serial console and so to the wrapper's log.
echo "hello: reading 'in' ($(wc -l < in) lines)"
{
    echo "Hello from inside the VM ($(uname -sr), $(grep -c ^processor /proc/cpuinfo) CPU)."
    echo "Your input, upper-cased:"
    tr 'a-z' 'A-Z' < in
} > out.tmp
mv out.tmp out   # write, then rename: the host never sees half a file
echo "hello: wrote 'out' ($(wc -c < out) bytes)"
