"""boinc-vmwrapper: run BOINC jobs inside virtual machines (a Python vboxwrapper)."""

__version__ = "0.1.0"

#: Reported in the log as the wrapper version, like vboxwrapper's VBOXWRAPPER_RELEASE.
WRAPPER_RELEASE = 26212
