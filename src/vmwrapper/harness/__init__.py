"""A local stand-in for the BOINC client: run one job from an APP_DIR as the client would.

:func:`vmwrapper.harness.job.run_job` takes a :class:`~vmwrapper.harness.request.JobRequest`,
stages the project and slot (``staging.py``, ``slot.py``), runs the main program episode by
episode (``task.py``: the client's 1 s poll over the shared segment) under the client's rules
(``control.py``: control queue, exit classification), checks and copies the outputs
(``outputs.py``) and returns a :class:`~vmwrapper.harness.report.JobReport`. ``vmwrapper job``
is its command line. See docs/harness.md.
"""
