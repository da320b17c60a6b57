"""VBoxManage.exe found as vboxwrapper finds it on Windows
(docs/compatibility.md#vboxmanage-on-windows): the ``InstallDir`` value under
``HKLM\\SOFTWARE\\Oracle\\VirtualBox``, put first on PATH; then the installers'
``VBOX_MSI_INSTALL_PATH`` / ``VBOX_INSTALL_PATH``. The rule is
:func:`vmwrapper.hostos.winnames.find_vboxmanage`; this module reads the registry."""

from __future__ import annotations

import importlib
import ntpath
import os
from collections.abc import Callable, MutableMapping

from vmwrapper.hostos import winnames


def registry_install_dir() -> str:
    """VirtualBox's ``InstallDir`` from the registry ("" when it is not installed)."""
    winreg = importlib.import_module("winreg")  # Windows only
    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, winnames.VBOX_REGISTRY_KEY) as key:
            value, _ = winreg.QueryValueEx(key, winnames.VBOX_REGISTRY_VALUE)
    except OSError:
        return ""
    return str(value)


def locate_vboxmanage(
    env: MutableMapping[str, str], is_file: Callable[[str], bool] = os.path.isfile
) -> str | None:
    """The VBoxManage.exe to run, or None; its directory goes first on ``env``'s PATH (so
    VirtualBox's own DLLs and helpers are found), as vboxwrapper does."""
    found = winnames.find_vboxmanage(registry_install_dir(), env, is_file)
    if found is not None:
        folder = ntpath.dirname(found)
        path = env.get("PATH", "")
        env["PATH"] = f"{folder};{path}" if path else folder
    return found
