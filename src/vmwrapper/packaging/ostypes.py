"""Guest OS type names VirtualBox knows (``VBoxManage list ostypes``), for the linter.

``os_name`` in vbox_job.xml becomes ``createvm --ostype``; VirtualBox refuses names it does
not know. The table holds the IDs of VirtualBox 5.x-7.0 for the OS families VM apps use (the
Linux family complete, the rest as commonly seen); VirtualBox 7.1 adds release-numbered IDs
(``Debian12_64``, ``Ubuntu24_LTS_64``) which older hosts lack, matched by a pattern.
"""

from __future__ import annotations

import difflib
import enum
import re

_BASE = """
Other Other_64 DOS Netware L4 QNX JRockitVE VBoxBS_64
Windows31 Windows95 Windows98 WindowsMe WindowsNT3x WindowsNT4 Windows2000 WindowsXP
WindowsXP_64 Windows2003 Windows2003_64 WindowsVista WindowsVista_64 Windows2008
Windows2008_64 Windows7 Windows7_64 Windows8 Windows8_64 Windows81 Windows81_64
Windows2012_64 Windows10 Windows10_64 Windows2016_64 Windows2019_64 Windows11_64
Windows2022_64 WindowsNT WindowsNT_64
Linux22 Linux24 Linux24_64 Linux26 Linux26_64 Linux Linux_64
ArchLinux ArchLinux_64 Debian Debian_64 Fedora Fedora_64 Gentoo Gentoo_64 Mandriva Mandriva_64
OpenSUSE OpenSUSE_64 OpenSUSE_Leap_64 OpenSUSE_Tumbleweed OpenSUSE_Tumbleweed_64
Oracle Oracle_64 RedHat RedHat_64 Turbolinux Turbolinux_64 Ubuntu Ubuntu_64 Lubuntu
Lubuntu_64 Xubuntu Xubuntu_64 Xandros Xandros_64 Oracle7_64 Oracle8_64 Oracle9_64
RedHat7_64 RedHat8_64 RedHat9_64 Debian8 Debian8_64 Debian9 Debian9_64 Debian10 Debian10_64
Debian11 Debian11_64 Debian12 Debian12_64 Mageia Mageia_64
Solaris Solaris_64 OpenSolaris OpenSolaris_64 Solaris11_64
FreeBSD FreeBSD_64 OpenBSD OpenBSD_64 NetBSD NetBSD_64
OS2Warp3 OS2Warp4 OS2Warp45 OS2eCS OS21x OS2
MacOS MacOS_64 MacOS106 MacOS106_64 MacOS107_64 MacOS108_64 MacOS109_64 MacOS1010_64
MacOS1011_64 MacOS1012_64 MacOS1013_64
"""

KNOWN_OS_TYPES = frozenset(_BASE.split())

#: Release-numbered IDs of newer VirtualBox versions (e.g. Debian12_64, Ubuntu22_LTS_64).
_NEWER = re.compile(
    r"^(Debian|Ubuntu|Fedora|Oracle|RedHat|OpenSUSE|Mageia|ArchLinux|Gentoo|Linux|"
    r"Lubuntu|Xubuntu|Oracle\d|RedHat\d)\d*(_LTS)?(_64|_arm64)?$"
)


class OsTypeVerdict(enum.Enum):
    KNOWN = "known"
    NEWER_ONLY = "newer_only"  # a name only recent VirtualBox versions know
    UNKNOWN = "unknown"


def check_os_type(name: str) -> OsTypeVerdict:
    if name in KNOWN_OS_TYPES:
        return OsTypeVerdict.KNOWN
    if _NEWER.match(name):
        return OsTypeVerdict.NEWER_ONLY
    return OsTypeVerdict.UNKNOWN


def suggest_os_type(name: str) -> str:
    """The closest known name (case-insensitive), or "Linux26_64"."""
    lowered = {n.lower(): n for n in KNOWN_OS_TYPES}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[match[0]] if match else "Linux26_64"
