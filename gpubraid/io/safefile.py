"""Reading safetensors files with a JSON document in their metadata (model files, checkpoints).

Reading one never runs code: safetensors holds only arrays, and the document is parsed as JSON.
The header is checked against the file's size before any array is read, so a truncated or
damaged file is :class:`Unreadable` (a one-line reason), never a traceback or a huge allocation.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import UserError

#: Array dtypes a gpubraid file holds.
DTYPES = ("float64", "float32", "int64")


class Unreadable(UserError):
    """A file that is not a complete safetensors file with our JSON document: damaged, truncated,
    foreign.  The message says which file and why."""


def read(path: str, key: str, what: str) -> tuple[dict, dict]:
    """(arrays, document) of the safetensors file ``path``: name -> host NumPy array, and the JSON
    object stored under metadata ``key``.

    Raises:
        Unreadable: ``path`` is missing, truncated, not safetensors, has no JSON object under
            ``key``, or holds an array of another dtype than :data:`DTYPES`; the message starts
            with ``what`` (e.g. "model file").
    """
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise Unreadable(f"{what} {path!r} does not exist")
    try:
        with safe_open(path, framework="numpy") as f:
            text = (f.metadata() or {}).get(key)
            if text is None:
                raise ValueError(f"no {key!r} metadata")
            doc = json.loads(text)
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # not safetensors, not ours, truncated, damaged
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Unreadable(f"{what} {path!r} cannot be read: {reason}") from None
    if not isinstance(doc, dict):
        raise Unreadable(f"{what} {path!r} cannot be read: its {key!r} metadata is not a JSON object")
    for name, a in arrays.items():
        if np.dtype(a.dtype).name not in DTYPES:
            raise Unreadable(f"{what} {path!r}: array {name} has dtype {a.dtype}; gpubraid files hold "
                             f"{', '.join(DTYPES)}")
    return arrays, doc
