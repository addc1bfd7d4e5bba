"""Checkpoint files: one safetensors file per checkpoint, written atomically, the last two kept.

A checkpoint is ``checkpoint-<iteration>.safetensors`` in its directory: named arrays (parameters
and optimiser vectors in the serial layout, one-shot warm-start rows per rank) plus a JSON
document in the safetensors metadata (settings, history, optimiser scalars, RNG and batch-order
state).  It is written to a temporary file in the same directory and renamed into place, so a
crash (even ``kill -9``) never leaves a half-written checkpoint behind; older checkpoints beyond
the newest :data:`KEEP` are removed only after the new one is in place.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from ..errors import UserError
from ..runtime.atomic import write_atomic

KEEP = 2


FORMAT = 1


_NAME = re.compile(r"^checkpoint-(\d+)\.safetensors$")


def _checkpoints(directory: str) -> list[tuple[int, str]]:
    """(iteration, path) of the complete checkpoints in ``directory``, oldest first."""
    found = []
    for name in os.listdir(directory):
        m = _NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


def save(directory: str, iteration: int, arrays: dict, meta: dict) -> str:
    """Write one checkpoint atomically and drop all but the newest :data:`KEEP`; returns its path.

    Args:
        directory: an existing writable directory.
        iteration: optimisation steps done (names the file).
        arrays: name -> NumPy array (any shape, float or int dtype).
        meta: JSON-able document.
    """
    from safetensors.numpy import save as to_bytes

    payload = to_bytes({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                       metadata={"gpubraid": json.dumps({"format": FORMAT, **meta})})
    path = os.path.join(directory, f"checkpoint-{iteration:08d}.safetensors")
    write_atomic(path, lambda f: f.write(payload), binary=True)
    for _, old in _checkpoints(directory)[:-KEEP]:
        os.unlink(old)
    return path


def load_latest(directory: str) -> tuple[dict, dict, str]:
    """(arrays, meta, path) of the newest checkpoint in ``directory``; UserError if there is none."""
    from safetensors import safe_open

    if not os.path.isdir(directory):
        raise UserError(f"resume: directory {directory!r} does not exist")
    found = _checkpoints(directory)
    if not found:
        raise UserError(f"resume: no checkpoint-*.safetensors in {directory!r}")
    path = found[-1][1]
    try:
        with safe_open(path, framework="numpy") as f:
            meta = json.loads(f.metadata()["gpubraid"])
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # a damaged file: say which, never a traceback
        raise UserError(f"resume: cannot read checkpoint {path!r}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"resume: {path!r} has checkpoint format {meta.get('format')}; this gpubraid reads {FORMAT}")
    return arrays, meta, path
