"""The QEMU back end's accelerator choice on Windows, as Windows Python (under Wine):
``choose_accel`` for an x86_64 guest with ``qemu-system-x86_64`` found on PATH, and the
firmware directory the back end passes with ``-L``. Prints one JSON object.

    python.exe accel_choice.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The embeddable Python ignores PYTHONPATH: import the package from this checkout's src/.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from vmwrapper.hypervisor.qemu.accel import AccelSetting, bundled_data_dir, choose_accel

BINARY = "qemu-system-x86_64"

if __name__ == "__main__":
    choice = choose_accel(AccelSetting.AUTO, "x86_64", BINARY)
    data_dir = bundled_data_dir(BINARY)
    print(
        json.dumps(
            {
                "accel": choice.accel.value,
                "reason": choice.reason,
                "data_dir_has_bios": data_dir is not None
                and (data_dir / "bios-256k.bin").is_file(),
            }
        )
    )
