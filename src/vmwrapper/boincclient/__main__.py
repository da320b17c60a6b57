"""``python -m vmwrapper.boincclient APP_DIR``: see :mod:`vmwrapper.boincclient.run`."""

import sys

from vmwrapper.boincclient.run import main

sys.exit(main())
