"""A module that a test must never see imported or called: importing it, or calling ``trap``
(keyword arguments only, as a step factory is called), creates the file named by the
environment variable GPUBRAID_TRAP."""
import os

_MARK = os.environ.get("GPUBRAID_TRAP")
if _MARK:
    with open(_MARK, "a") as f:
        f.write("imported\n")


def trap(**kwargs):
    if _MARK:
        with open(_MARK, "a") as f:
            f.write(f"called {sorted(kwargs)}\n")
