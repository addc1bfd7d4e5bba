"""Memory needed by a training run, checked before anything large is allocated.

The estimate counts, per rank, the arrays that grow with the problem:

    states      the forward states and adjoints of the rank's layers and their MGRIT levels, plus
                the step's temporaries: STATE_COPIES × (N/P + 1) × B × |state| numbers
    parameters  the rank's layer parameters with the optimiser's copies (L-BFGS: 2·memory + 4
                vectors; Adam: 4; SGD: 3)

It is a lower bound in spirit (a run needs somewhat more), so a run it refuses could never fit.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import UserError

#: Arrays of the states' size one training step keeps alive at once: forward states, adjoints,
#: the adjoint solve's copy of the states, the coarse levels' u and g, and the step's temporaries.
STATE_COPIES = 6


def available_bytes(backend) -> int:
    """Memory the run may use: free device memory on a GPU, else the host's available memory."""
    if backend.is_gpu:
        free, _ = backend.xp.cuda.runtime.memGetInfo()
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


def check_memory(cfg, state_shape, params_per_layer: int, batch: int, ranks: int, backend) -> None:
    """UserError naming the options when the run cannot fit in this rank's memory.

    Args:
        cfg: resolved :class:`~gpubraid.training.config.TrainConfig`.
        state_shape: per-sample state shape.
        params_per_layer: numbers in one residual layer's parameters.
        batch: samples per optimisation step.
        ranks: processes sharing the layers.
        backend: where the arrays will live.
    """
    item = np.dtype(backend.dtype).itemsize
    rows = math.ceil(cfg.layers / ranks) + 1
    state = math.prod(state_shape)
    states = STATE_COPIES * rows * batch * state * item
    vectors = {"lbfgs": 2 * cfg.memory + 4, "adam": 4, "sgd": 3}[cfg.optimizer]
    params = vectors * (rows - 1) * params_per_layer * item
    have = available_bytes(backend)
    if states + params <= have:
        return
    where = "GPU" if backend.is_gpu else "host"
    if states >= params:
        raise UserError(
            f"memory: the states need about {_size(states)} per rank (--layers {cfg.layers} over {ranks} "
            f"rank(s) x batch {batch} x state {'x'.join(map(str, state_shape))} x {item} bytes x "
            f"{STATE_COPIES} copies) but the {where} has {_size(have)} available; reduce --layers, "
            "--batch-size or --channels, or use more ranks")
    raise UserError(
        f"memory: the parameters need about {_size(params)} per rank (--layers {cfg.layers} over {ranks} "
        f"rank(s) x {params_per_layer} numbers per layer (--channels {cfg.channels}) x {item} bytes x "
        f"{vectors} optimiser vectors) but the {where} has {_size(have)} available; reduce --channels "
        "or --layers, or use more ranks")
