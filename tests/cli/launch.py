"""``python -m gpubraid`` in a subprocess, the way a user runs it."""
import os
import subprocess
import sys


def run_cli(*args, timeout=120, launcher=()):
    """Run ``python -m gpubraid ARGS`` (optionally under ``launcher``) from the tests' directory."""
    cmd = [*launcher, sys.executable, "-m", "gpubraid", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "GPUBRAID_BACKEND": "numpy"})
