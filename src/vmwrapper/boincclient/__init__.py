"""Run jobs under the real BOINC client (Debian's ``boinc-client`` 7.20.5), without a server.

* :mod:`~vmwrapper.boincclient.state` - the hand-made ``client_state.xml`` and its companion
  files, and the results read back (pure);
* :mod:`~vmwrapper.boincclient.plan` - an APP_DIR plus jobs to a client state (pure);
* :mod:`~vmwrapper.boincclient.tasks` - ``boinccmd --get_tasks`` parsed (pure);
* :mod:`~vmwrapper.boincclient.datadir` - write the data directory (I/O);
* :mod:`~vmwrapper.boincclient.client` - start ``boinc``, drive it with ``boinccmd``, stop it;
* ``python -m vmwrapper.boincclient APP_DIR`` - run one job, for a project admin.
"""

from vmwrapper.boincclient.client import BoincClient, StopReport
from vmwrapper.boincclient.datadir import DataDir, write_data_dir
from vmwrapper.boincclient.plan import JobRequest, Naming
from vmwrapper.boincclient.state import BoincClientError, ResultRecord, ResultState
from vmwrapper.boincclient.tasks import ActiveTaskState, TaskInfo, parse_get_tasks

__all__ = [
    "ActiveTaskState",
    "BoincClient",
    "BoincClientError",
    "DataDir",
    "JobRequest",
    "Naming",
    "ResultRecord",
    "ResultState",
    "StopReport",
    "TaskInfo",
    "parse_get_tasks",
    "write_data_dir",
]
