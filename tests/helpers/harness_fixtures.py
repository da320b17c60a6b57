"""Test helpers for the client harness: app directories for test apps, a fast clock."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "protocol"

PYAPP_LAUNCHER = """#!/bin/sh
# main program of the Python test app: run pyapp.py (staged next to this file) with the
# harness's interpreter
exec "$VMWRAPPER_PYTHON" "$(dirname "$0")/pyapp_1.py" "$@"
"""

OUTPUT_TEMPLATE = """<output_template>
<file_info>
    <name><OUTFILE_0/></name>
    <generated_locally/>
    <upload_when_present/>
    <max_nbytes>{max_nbytes}</max_nbytes>
    <url><UPLOAD_URL/></url>
</file_info>
<result>
    <file_ref>
        <file_name><OUTFILE_0/></file_name>
        <open_name>{open_name}</open_name>
        {copy}
    </file_ref>
</result>
</output_template>
"""

INPUT_TEMPLATE = """<input_template>
<file_info>
    <number>0</number>
</file_info>
<workunit>
    <file_ref>
        <file_number>0</file_number>
        <open_name>{open_name}</open_name>
        <copy_file/>
    </file_ref>
    <command_line>{command_line}</command_line>
    <rsc_fpops_est>1e10</rsc_fpops_est>
</workunit>
</input_template>
"""


def make_pyapp_dir(
    root: Path,
    cmdline: str = "",
    *,
    output: str = "out",
    output_copy: bool = False,
    max_nbytes: int = 100000,
    input_name: str | None = None,
    api_version: str = "7.20.5",
    bounds: str = "",
) -> Path:
    """An APP_DIR whose main program runs tests/data/protocol/pyapp.py under the harness."""
    app = root / "pyapp"
    (app / "templates").mkdir(parents=True)
    launcher = app / "pyapp_launcher_1.sh"
    launcher.write_text(PYAPP_LAUNCHER)
    launcher.chmod(0o755)
    shutil.copyfile(DATA / "pyapp.py", app / "pyapp_1.py")
    (app / "version.xml").write_text(
        "<version>\n"
        "  <file><physical_name>pyapp_launcher_1.sh</physical_name><main_program/></file>\n"
        "  <file><physical_name>pyapp_1.py</physical_name>"
        "<logical_name>pyapp.py</logical_name></file>\n"
        f"  <api_version>{api_version}</api_version>\n"
        f"  <cmdline>{cmdline}</cmdline>\n"
        "</version>\n"
    )
    (app / "templates" / "output_template.xml").write_text(
        OUTPUT_TEMPLATE.format(
            max_nbytes=max_nbytes, open_name=output, copy="<copy_file/>" if output_copy else ""
        )
    )
    if bounds and input_name is None:  # a workunit with bounds (e.g. rsc_disk_bound), no files
        (app / "templates" / "input_template.xml").write_text(
            f"<input_template><workunit>{bounds}</workunit></input_template>\n"
        )
    if input_name is not None:
        (app / "templates" / "input_template.xml").write_text(
            INPUT_TEMPLATE.format(open_name=input_name, command_line="")
        )
        (app / "inputs").mkdir()
        (app / "inputs" / Path(input_name).name).write_text("input data\n")
    return app


class FastClock:
    """A clock that runs ``factor`` times faster than real time: ``sleep(10)`` takes
    ``10 / factor`` real seconds and moves the clock by 10 s. The harness's 60 s and 180 s
    rules then pass in a moment, while the child process still gets real time to run."""

    def __init__(self, factor: float = 20.0) -> None:
        self.factor = factor
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def sleep(self, seconds: float) -> None:
        real = seconds / self.factor
        time.sleep(real)
        self.offset += seconds - real


def make_shell_app_dir(root: Path, script: str, *, is_wrapper: bool = False) -> Path:
    """An APP_DIR whose main program is a /bin/sh script (no BOINC API at all)."""
    app = root / "shapp"
    app.mkdir(parents=True)
    main = app / "shapp_1.sh"
    main.write_text("#!/bin/sh\n" + script)
    main.chmod(0o755)
    (app / "version.xml").write_text(
        "<version>\n"
        "  <file><physical_name>shapp_1.sh</physical_name><main_program/></file>\n"
        "  <api_version>7.20.5</api_version>\n"
        f"  {'<is_wrapper/>' if is_wrapper else ''}\n"
        "  <cmdline>--opt 'two words' \"x y\"</cmdline>\n"
        "</version>\n"
    )
    return app


def make_golden_like_app_dir(root: Path) -> Path:
    """The job the real client staged in the golden slot (tests/data/protocol/real-client-slot)."""
    app = root / "vmapp"
    (app / "templates").mkdir(parents=True)
    (app / "inputs").mkdir()
    for name, text, mode in [
        ("vmwrapper_1.00_x86_64-pc-linux-gnu", "#!/bin/sh\nexit 0\n", 0o755),
        ("vm_image_1.vdi", "disk", 0o644),
        ("job_app_1.sh", "#!/bin/sh\necho hi\n", 0o755),
        ("vbox_job_1.xml", "<vbox_job></vbox_job>\n", 0o644),
    ]:
        (app / name).write_text(text)
        (app / name).chmod(mode)
    (app / "inputs" / "in").write_text("input\n")
    (app / "version.xml").write_text(
        "<version>\n"
        "<file><physical_name>vmwrapper_1.00_x86_64-pc-linux-gnu</physical_name>"
        "<main_program/></file>\n"
        "<file><physical_name>vm_image_1.vdi</physical_name>"
        "<logical_name>vm_image.vdi</logical_name><copy_file/></file>\n"
        "<file><physical_name>job_app_1.sh</physical_name>"
        "<logical_name>shared/boinc_app</logical_name><copy_file/></file>\n"
        "<file><physical_name>vbox_job_1.xml</physical_name>"
        "<logical_name>vbox_job.xml</logical_name></file>\n"
        "<dont_throttle/><is_wrapper/><api_version>7.20.5</api_version>\n"
        "</version>\n"
    )
    (app / "templates" / "input_template.xml").write_text(
        INPUT_TEMPLATE.format(open_name="shared/in", command_line="")
    )
    (app / "templates" / "output_template.xml").write_text(
        OUTPUT_TEMPLATE.format(max_nbytes=10000000, open_name="shared/out", copy="<copy_file/>")
    )
    return app
