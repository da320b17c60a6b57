"""What the installed VirtualBox understands: option spellings and features (pure).

Option spellings differ between VirtualBox 6 (``--nictype1``) and 7 (``--nic-type1``); which one a
host takes is decided by probing ``VBoxManage help modifyvm`` (see :func:`capabilities`), not by
a list of versions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vmwrapper.hypervisor.virtualbox import output
from vmwrapper.hypervisor.virtualbox.output import Version


class Syntax(enum.Enum):
    """Option spelling family of ``VBoxManage modifyvm``."""

    V6 = "6"  # --nictype1, --cableconnected1 (VirtualBox up to 6.1)
    V7 = "7"  # --nic-type1, --cable-connected1 (VirtualBox 7; the old names are aliases)


#: logical option → (VirtualBox 6 spelling, VirtualBox 7 spelling)
_OPTION_NAMES: dict[str, tuple[str, str]] = {
    "nic_type": ("--nictype", "--nic-type"),
    "cable": ("--cableconnected", "--cable-connected"),
    "nat_dns_proxy": ("--natdnsproxy", "--nat-dns-proxy"),
    "nat_dns_host_resolver": ("--natdnshostresolver", "--nat-dns-host-resolver"),
    "nat_pf": ("--natpf", "--nat-pf"),
    "bridge_adapter": ("--bridgeadapter", "--bridge-adapter"),
    "nic_bandwidth_group": ("--nicbandwidthgroup", "--nic-bandwidth-group"),
    "rtc_use_utc": ("--rtcuseutc", "--rtc-use-utc"),
    "drag_and_drop": ("--draganddrop", "--drag-and-drop"),
    "vrde_extpack": ("--vrdeextpack", "--vrde-extpack"),
    "vrde_auth_library": ("--vrdeauthlibrary", "--vrde-auth-library"),
    "vrde_auth_type": ("--vrdeauthtype", "--vrde-auth-type"),
    "vrde_port": ("--vrdeport", "--vrde-port"),
    "vrde_address": ("--vrdeaddress", "--vrde-address"),
    "vrde_property": ("--vrdeproperty", "--vrde-property"),
}


@dataclass(frozen=True)
class Capabilities:
    """What the installed VirtualBox understands, from probing it once per run."""

    version: Version | None = None
    version_text: str = ""  # raw `--version` output (stripped), for logs
    syntax: Syntax = Syntax.V7
    audio_enabled_option: bool = True  # `--audio-enabled off` (7.0.4+) vs `--audio none`
    hwvirtex_option: bool = False  # `--hwvirtex` still listed (gone in 6.1+)
    nic_types: tuple[str, ...] = ()  # NIC models `help modifyvm` lists
    guest_additions_iso: str = ""  # existing Guest Additions ISO, attached as an extra DVD
    lpt_ports: bool = True  # not on macOS hosts

    @property
    def display_version(self) -> str:
        shown = ".".join(str(p) for p in self.version) if self.version else "Unknown"
        return f"VirtualBox VboxManage Interface (Version: {shown})"

    def option(self, logical: str, index: int | None = None) -> str:
        v6, v7 = _OPTION_NAMES[logical]
        name = v7 if self.syntax is Syntax.V7 else v6
        return f"{name}{index}" if index is not None else name

    def accepts_nic_type(self, nic_type: str) -> bool:
        """vboxwrapper's check for `vm_network_driver`: the help text must list it."""
        return bool(nic_type) and nic_type in self.nic_types


_NIC_MODELS = ("Am79C970A", "Am79C973", "Am79C960", "82540EM", "82543GC", "82545EM", "virtio")


def capabilities(
    version_text: str,
    help_modifyvm: str,
    *,
    guest_additions_iso: str = "",
    macos: bool = False,
) -> Capabilities:
    """Decide syntax and features from `--version` and `help modifyvm` output.

    The help text decides; when it says nothing useful (empty, or a failed command) the version
    does (> 6.9.99 → 7 syntax), and an unparseable version counts as new, as in vboxwrapper.
    """
    version = output.parse_version(version_text)
    if output.help_mentions(help_modifyvm, "--nic-type"):
        syntax = Syntax.V7
    elif output.help_mentions(help_modifyvm, "--nictype"):
        syntax = Syntax.V6
    else:
        syntax = Syntax.V7 if output.is_newer(version, (6, 9, 99)) else Syntax.V6
    if output.help_mentions(help_modifyvm, "--audio-enabled"):
        audio_enabled = True
    elif output.help_mentions(help_modifyvm, "--audio"):
        audio_enabled = False
    else:
        audio_enabled = output.is_newer(version, (7, 0, 4))
    return Capabilities(
        version=version,
        version_text=version_text.strip(),
        syntax=syntax,
        audio_enabled_option=audio_enabled,
        hwvirtex_option=output.help_mentions(help_modifyvm, "--hwvirtex"),
        nic_types=tuple(m for m in _NIC_MODELS if m in help_modifyvm),
        guest_additions_iso=guest_additions_iso,
        lpt_ports=not macos,
    )
