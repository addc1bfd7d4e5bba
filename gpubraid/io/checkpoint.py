"""Checkpoint files: one safetensors file per checkpoint, written atomically, the last two kept.

A checkpoint is ``checkpoint-<iteration>.safetensors`` in its directory: named arrays (parameters
and optimiser vectors in the serial layout, one-shot warm-start rows per rank) plus a JSON
document in the safetensors metadata (settings, history, optimiser scalars, RNG and batch-order
state).  It is written to a temporary file in the same directory and renamed into place, so a
crash (even ``kill -9``) never leaves a half-written checkpoint behind; older checkpoints beyond
the newest :data:`KEEP` are removed only after the new one is in place.

A checkpoint that cannot be written (no space, quota, permissions) raises
:class:`~gpubraid.runtime.atomic.WriteError` naming the file, the bytes needed and the last good
checkpoint, which stays intact.  :func:`load_latest` takes the newest checkpoint that reads back completely
(a file truncated by a crash or a cut-short copy is skipped, and said so).
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re

import numpy as np

from ..errors import UserError
from ..network.spec import BUILT_IN, refusal
from ..runtime.atomic import WriteError, write_output
from .safefile import Unreadable, read

KEEP = 2


FORMAT = 1


KEY = "gpubraid"


_NAME = re.compile(r"^checkpoint-(\d+)\.safetensors$")


def _checkpoints(directory: str) -> list[tuple[int, str]]:
    """(iteration, path) of the checkpoints in ``directory``, oldest first."""
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

    Raises:
        WriteError: the file could not be written (the directory is left as it was).
    """
    from safetensors.numpy import save as to_bytes

    payload = to_bytes({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                       metadata={KEY: json.dumps({"format": FORMAT, **meta})})
    path = os.path.join(directory, f"checkpoint-{iteration:08d}.safetensors")
    try:
        write_output("checkpoint_dir", path, payload)
    except WriteError as exc:
        done = _checkpoints(directory) if os.path.isdir(directory) else []
        raise WriteError(f"{exc}; the last good checkpoint is {repr(done[-1][1]) if done else 'none'}") from None
    for _, old in _checkpoints(directory)[:-KEEP]:
        os.unlink(old)
    return path


#: The checkpoint document's keys and their JSON types (checked before anything uses them).
_DOC = {"format": numbers.Integral, "config": dict, "ranks": numbers.Integral, "history": list,
        "optimizer": dict, "rng": dict, "pos": numbers.Integral, "failures": numbers.Integral,
        "first": (numbers.Real, type(None)), "elapsed": numbers.Real, "stopped": str}


def check_document(meta: dict, arrays: dict) -> None:
    """ValueError (not a UserError: the caller names the file) unless a checkpoint's document and arrays have the types and sizes a resume uses."""
    for key, kind in _DOC.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ValueError(f"its {key!r} is {type(meta.get(key)).__name__}")
    if meta["format"] != FORMAT:
        raise ValueError(f"checkpoint format {meta['format']}; this gpubraid reads {FORMAT}")
    if meta["ranks"] < 1 or meta["pos"] < 0 or meta["failures"] < 0:
        raise ValueError("negative counts")
    if not all(isinstance(e, dict) and isinstance(e.get("objective"), numbers.Real) for e in meta["history"]):
        raise ValueError("its history entries lack an objective")
    if not math.isfinite(meta["elapsed"]):
        raise ValueError("its elapsed time is not finite")
    theta = arrays.get("theta")
    if theta is None or theta.ndim != 1 or theta.dtype.kind != "f":
        raise ValueError("no parameter vector 'theta'")
    for name, a in arrays.items():
        if name.startswith("opt.") and a.shape != theta.shape:
            raise ValueError(f"optimiser vector {name} has shape {a.shape}, theta {theta.shape}")
    order = arrays.get("batch_order")
    if order is not None and (order.ndim != 1 or order.dtype.kind != "i"):
        raise ValueError("its batch order is not a vector of sample indices")


def check_restorable(arrays: dict, meta: dict, path: str, size: int, n_train: int, warm: dict) -> np.random.Generator:
    """UserError unless a readable checkpoint fits this run: ``size`` parameters, ``n_train``
    samples, warm-start rows ``warm`` (name -> (rows, state shape)) of the right shapes; returns
    the generator its RNG state restores."""
    if arrays["theta"].size != size:
        raise UserError(f"resume: {path!r} holds {arrays['theta'].size} parameters; this network has {size}")
    order = arrays.get("batch_order")
    if order is not None and (order.size != n_train or (order.size and not 0 <= order.min() <= order.max() < n_train)
                              or not 0 <= meta["pos"] <= n_train):
        raise UserError(f"resume: {path!r} has a batch order for another data set ({order.size} samples; "
                        f"this one has {n_train})")
    for name, (rows, state) in warm.items():
        a = arrays.get(name)
        if a is not None and (a.ndim != 2 + len(state) or a.shape[0] != rows or tuple(a.shape[2:]) != tuple(state)):
            raise UserError(f"resume: {path!r}: warm-start rows {name} have shape {a.shape}; this run needs "
                            f"({rows}, B, {', '.join(map(str, state))})")
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = meta["rng"]
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"resume: {path!r} has no valid random-generator state ({exc})") from None
    return rng


def newest_readable(directory: str) -> tuple[dict, dict, str, list[str]]:
    """(arrays, meta, path, skipped) of the newest checkpoint in ``directory`` that reads back
    completely; ``skipped`` says, one line each, which newer ones could not be read and why (a
    file truncated by a crash or a copy cut short).

    Raises:
        UserError: no directory, no checkpoint, or none readable (the message lists why).
    """
    if not os.path.isdir(directory):
        raise UserError(f"resume: directory {directory!r} does not exist")
    found = _checkpoints(directory)
    if not found:
        raise UserError(f"resume: no checkpoint-*.safetensors in {directory!r}")
    skipped = []
    for _, path in reversed(found):
        try:
            arrays, meta = read(path, KEY, "checkpoint")
        except Unreadable as exc:
            skipped.append(str(exc))
            continue
        if meta.get("format") != FORMAT:
            raise UserError(f"resume: {path!r} has checkpoint format {meta.get('format')!r}; this gpubraid "
                            f"reads {FORMAT}")
        return arrays, meta, path, skipped
    raise UserError(f"resume: no readable checkpoint in {directory!r}: {'; '.join(skipped)}")


def load_latest(directory: str) -> tuple[dict, dict, str]:
    """(arrays, meta, path) of the newest readable checkpoint in ``directory`` (:func:`newest_readable`)."""
    return newest_readable(directory)[:3]

def load_for_resume(directory: str, mine: dict, resumable) -> tuple[dict, dict, str, list[str], str | None]:
    """:func:`load_latest` checked against this run's settings ``mine`` (a ``TrainConfig`` dump):
    every setting but those in ``resumable`` must agree.  A checkpoint whose ``layer`` is an import
    path is refused (:func:`~gpubraid.network.spec.refusal`) unless ``mine`` names the same layer or
    ``mine["trust"]`` is set; returns (arrays, meta, path, skipped, the run's layer)."""
    arrays, meta, path, skipped = newest_readable(directory)
    try:
        check_document(meta, arrays)
    except ValueError as exc:
        raise UserError(f"resume: {path!r} is not a complete gpubraid checkpoint: {exc}") from None
    mine, layer = dict(mine), meta["config"].get("layer")
    if mine.get("layer") is None and isinstance(layer, str) and layer not in BUILT_IN:
        if not mine.get("trust"):
            raise refusal(f"checkpoint {path!r}", layer)
        mine["layer"] = layer
    for key, value in meta["config"].items():
        if key not in resumable and mine.get(key) != value:
            raise UserError(f"resume: {key} is {mine.get(key)!r} here but {value!r} in {path!r}; "
                            "resume with the settings of the interrupted run")
    return arrays, meta, path, skipped, mine.get("layer")
