"""Fixtures the whole suite shares; plain helpers live in ``tests/helpers`` (``helpers.*``).

Registered here, so no test module imports a fixture:

* ``default_guest_image`` (session) — the default guest image, built once through the cache
  (``helpers/image_fixtures.py``).
* ``vbox_sim`` / ``vbox_host`` — the VBoxManage simulator on PATH, or (``vbox_host``'s
  ``real`` variant) real VirtualBox (``helpers/vbox_fixtures.py``).
* ``wine_toolchain`` / ``windows_exe`` / ``vboxsim_exe`` (session) — the Wine toolchain,
  vmwrapper.exe and the VBoxManage simulator as VBoxManage.exe, each built once per source
  tree, for tests/windows (``helpers/wine_fixtures.py``).
"""

from __future__ import annotations

from helpers.image_fixtures import default_guest_image
from helpers.vbox_fixtures import vbox_host_fixture, vbox_sim_fixture
from helpers.wine_fixtures import vboxsim_exe, windows_exe, wine_toolchain

__all__ = [
    "default_guest_image",
    "vbox_host_fixture",
    "vbox_sim_fixture",
    "vboxsim_exe",
    "windows_exe",
    "wine_toolchain",
]
