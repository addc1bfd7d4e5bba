"""Memory needed by a training run, checked before anything large is allocated.

The estimate counts, per rank, the arrays that grow with the problem:

    states      the forward states and adjoints of the rank's layers and their MGRIT levels, plus
                the step's temporaries: STATE_COPIES × (N/P + 1) × B × |state| numbers; layer-serial
                training (the pipeline of gpubraid.objective.pipeline) holds the states of the
                micro-batches in flight (GPipe: all M; 1F1B: at most min(P, M); Chimera: at most
                min(P + 1, M)) plus PIPELINE_WORK micro-batches' worth of adjoints and temporaries:
                (in flight + PIPELINE_WORK) × (N/P + 1) × (the largest micro-batch: ⌈B/M⌉, or more
                with smaller ends) × |state|,
                and the opening layer's output u_0 and λ_0 of the whole batch (rank 0): 2 × B × |state|
    parameters  the rank's layer parameters with the optimiser's copies (L-BFGS: 2·memory + 4
                vectors; Adam: 4; SGD: 3; Chimera on several ranks: 2 more, the mirror block's
                parameters and gradient)

It is a lower bound in spirit (a run needs somewhat more), so a run it refuses could never fit.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import UserError
from .atomic import format_bytes


def _size(n: float) -> str:
    """Memory in powers of 1024 (``"3.0 GiB"``)."""
    return format_bytes(n, binary=True)


#: Arrays of the states' size one training step keeps alive at once: forward states, adjoints,
#: the adjoint solve's copy of the states, the coarse levels' u and g, and the step's temporaries.
STATE_COPIES = 6


#: Arrays of the batch's outputs (B × outputs) the head keeps alive: outputs, probabilities, their gradient.
OUTPUT_COPIES = 3


#: Arrays of one micro-batch's states the pipeline's backward step needs besides the held states:
#: its adjoints, the parameter gradient's temporaries, and the adjoint step's.
PIPELINE_WORK = 3


#: Automatic micro-batches: this many per layer rank (one on a single layer rank: the whole batch),
#: or more where :data:`HELD_BYTES` asks for it.
MICRO_BATCHES_PER_RANK = 4

#: Bytes a micro-batch may hold on one rank between its forward and its backward sweep (states and
#: the σ'(z) kept) when the step is ``cache_blocked``: on one rank, 1F1B runs each micro-batch's
#: backward right after its forward, so what fits in the caches is read back from them.  Measured
#: on the development VM of 2026-12-04 (2 MiB L2 per core; ms per L-BFGS step at 5000 samples,
#: float64, one rank): peaks 256 layers 53 ms unsplit, 54 at M = 4, 44 at M = 8–16 (10–5 MiB per micro-batch),
#: 48 at M = 64; 64 layers 14.2 unsplit, 11.4 at M = 4, 12.9 at M = 16; MNIST conv (batch 50)
#: 220 unsplit, 133 at M = 10, 202 at M = 50.  The same budget as inference's sample blocks
#: (:data:`gpubraid.network.sweep.THROUGH_BYTES`).
HELD_BYTES = 8 << 20

#: A batch that holds at most this much unsplit stays in the caches as it is: cutting it only adds
#: calls.  peaks 256 layers on one rank, ms per evaluation: 625 samples (20.5 MB) 6.29 unsplit, 6.57
#: at M = 2, 7.05 at M = 3; 1250 samples (41 MB) 14.4 unsplit, 12.8 at M = 5; 2500 (82 MB) 28.9
#: unsplit, 23.8 at M = 5.
CUT_ABOVE = 4 * HELD_BYTES


def held_bytes(layers: int, state_bytes: int, cache_blocked: bool) -> int:
    """Bytes one sample holds on a rank of ``layers`` layers from its forward to its backward sweep
    (n + 1 states and n kept σ'(z) of ``state_bytes`` each) when the step is ``cache_blocked``, else 0
    (no micro-batches for the caches' sake: GPUs, steps on the torch engine, user steps)."""
    return (2 * int(layers) + 1) * int(state_bytes) if cache_blocked else 0


#: Sizes of the first two micro-batches and of the last, relative to the others, in a 1F1B pipeline
#: over at least RAMP_RANKS layer ranks and of more micro-batches than ranks (each of at least
#: RAMP_SAMPLES samples).  Rank r waits until the first micro-batch has passed the r ranks before it
#: (the pipeline's fill), and the last one's backward runs down the ranks after the last rank is done
#: (its drain): smaller ends shorten both waits while the middle micro-batches keep the calls few.
#: Replayed steady state (``python -m bench.pipeline_ramp``: peaks full batch, medians of 3 traced
#: runs each way, VM of 2026-12-04): 4 ranks 2.9 % faster (64 layers, M = 16) and 0.5 % (256 layers,
#: M = 16), 8 ranks 5.8 % (M = 16) and 2.8 % (M = 32); on 2 ranks, where both run equal sizes, the
#: two differ by 1.0-1.4 % (real runs 1.2-3.8 %): the comparison's noise.  Whole runs replayed
#: (12 iterations with start-up) had 2 and 3 ranks gain nothing from the ramp (-2 %, 0 %), though
#: the cost model (:func:`gpubraid.training.costmodel.pipeline_s`) expects 4 % there; it has the ramp
#: cost up to 12 % with M ≤ P (no steady state) and 1-20 % with GPipe.
FILL, DRAIN = (0.5, 0.75), 0.5
RAMP_RANKS, RAMP_SAMPLES = 4, 4


def micro_batch_bounds(batch: int, count: int, ranks: int = 1, schedule: str = "1f1b") -> np.ndarray:
    """(M + 1,) sample boundaries of ``count`` contiguous micro-batches of ``batch`` samples: as even
    as possible (the larger ones first, as :func:`gpubraid.runtime.comm.split_layers` splits layers)
    or, in a 1F1B ``schedule`` over RAMP_RANKS ≤ ``ranks`` < ``count`` layer ranks, with the ends
    smaller by :data:`FILL` and :data:`DRAIN`."""
    w = np.ones(count)
    if schedule == "1f1b" and RAMP_RANKS <= ranks < count and batch >= RAMP_SAMPLES * count:
        w[:len(FILL)], w[-1] = FILL, DRAIN
    sizes = np.floor(batch * w / w.sum()).astype(np.int64)
    full = np.flatnonzero(w == 1)
    more, rest = divmod(batch - int(sizes.sum()), len(full))
    sizes[full] += more
    sizes[full[:rest]] += 1
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def micro_batch_count(requested: int | None, ranks: int, batch: int, sample_bytes: int = 0,
                      schedule: str = "1f1b") -> int:
    """Micro-batches M of a pipelined batch: ``requested``, or by default MICRO_BATCHES_PER_RANK ×
    ``ranks`` (1 on one layer rank; with the Chimera ``schedule`` the least multiple of ``ranks`` of
    at least 2(ranks − 1): 2 on two ranks, 2P from four on; with unit step costs M = 6 on 4 ranks
    leaves a quarter of the time idle, M = 8 a ninth) and, when the whole batch would hold more
    than CUT_ABOVE at ``sample_bytes`` per sample (:func:`held_bytes`), at least enough that a
    micro-batch holds at most HELD_BYTES (more with 1F1B on RAMP_RANKS or more layer ranks, whose
    ends may be smaller: :data:`FILL`); at most the ``batch`` size and at least 1."""
    if requested is not None:
        M = requested
    else:
        need = int(batch) * int(sample_bytes)
        ramp = len(FILL) + 1 - sum(FILL) - DRAIN if ranks >= RAMP_RANKS and schedule == "1f1b" else 0
        cut = math.ceil(need / HELD_BYTES + ramp) if need > CUT_ABOVE else 1   # ramp: what smaller ends give up
        if ranks == 1:
            M = cut
        elif schedule == "chimera":   # a multiple of P: each direction fills its pipeline evenly
            M = ranks * math.ceil(max(2 * (ranks - 1), cut) / ranks)
        else:
            M = max(MICRO_BATCHES_PER_RANK * ranks, cut)
    return max(1, min(int(M), int(batch)))


def pipelined(cfg) -> bool:
    """Whether a run's layer-serial solves are pipelined micro-batches (serial, pipeline, and the
    one-level solves of exact and oneshot)."""
    return cfg.method in ("serial", "pipeline") or cfg.max_levels == 1


def in_flight(cfg, ranks: int, batch: int, sample_bytes: int = 0) -> tuple[int, int]:
    """(micro-batches whose states one rank holds at most, samples per micro-batch) of a pipelined
    run (``sample_bytes``: as :func:`micro_batch_count`)."""
    M = micro_batch_count(cfg.micro_batches, ranks, batch, sample_bytes, cfg.schedule)
    largest = int(np.diff(micro_batch_bounds(batch, M, ranks, cfg.schedule)).max())
    held = {"gpipe": M, "1f1b": min(ranks, M), "chimera": min(ranks + 1 if ranks > 1 else 1, M)}
    return held[cfg.schedule], largest


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


def check_memory(cfg, state_shape, params_per_layer: int, batch: int, ranks: int, backend,
                 ends: tuple[int, int] = (0, 0), sample_bytes: int = 0) -> None:
    """UserError naming the options when the run cannot fit in this rank's memory.

    Args:
        cfg: resolved :class:`~gpubraid.training.config.TrainConfig`.
        state_shape: per-sample state shape.
        params_per_layer: numbers in one residual layer's parameters.
        batch: samples per optimisation step.
        ranks: processes sharing the layers.
        backend: where the arrays will live.
        ends: (numbers in the opening layer's and the head's parameters, outputs per sample): the
            first and last rank's share besides the layers, counted on every rank.
        sample_bytes: what a sample holds on the largest layer block (:func:`held_bytes`; the automatic
            micro-batch count depends on it).
    """
    item = np.dtype(backend.dtype).itemsize
    rows = math.ceil(cfg.layers / ranks) + 1
    state = math.prod(state_shape)
    if pipelined(cfg):
        # each held with its states and σ'(z) kept for the backward
        held, size = in_flight(cfg, ranks, batch, sample_bytes)
        what = f"2 x {held} micro-batch(es) in flight + {PIPELINE_WORK}"
        states = ((2 * held + PIPELINE_WORK) * rows * size + 2 * batch) * state * item
        shape = f"micro-batch {size}"
    else:
        what, shape = f"{STATE_COPIES}", f"batch {batch}"
        states = STATE_COPIES * rows * batch * state * item
    vectors = {"lbfgs": 2 * cfg.memory + 4, "adam": 4, "sgd": 3}[cfg.optimizer] \
        + (2 if pipelined(cfg) and cfg.schedule == "chimera" and ranks > 1 else 0)
    params = vectors * (rows - 1) * params_per_layer * item
    end_params, n_out = ends
    head = (vectors * end_params + OUTPUT_COPIES * batch * n_out) * item
    have = available_bytes(backend)
    if states + params + head <= have:
        return
    where = "GPU" if backend.is_gpu else "host"
    if head >= states + params:
        raise UserError(
            f"memory: the opening layer and the head need about {_size(head)} per rank ({end_params} parameters, "
            f"{n_out} outputs per sample; a classifier has one per class, the largest label + 1) but the {where} "
            f"has {_size(have)} available; check the targets (y_train)")
    if states >= params:
        raise UserError(
            f"memory: the states need about {_size(states)} per rank (--layers {cfg.layers} over {ranks} "
            f"rank(s) x {shape} x state {'x'.join(map(str, state_shape))} x {item} bytes x "
            f"{what} copies) but the {where} has {_size(have)} available; reduce --layers, "
            "--batch-size or --channels, or use more ranks"
            + (", more --micro-batches or --schedule 1f1b" if pipelined(cfg) else ""))
    raise UserError(
        f"memory: the parameters need about {_size(params)} per rank (--layers {cfg.layers} over {ranks} "
        f"rank(s) x {params_per_layer} numbers per layer (--channels {cfg.channels}) x {item} bytes x "
        f"{vectors} optimiser vectors) but the {where} has {_size(have)} available; reduce --channels "
        "or --layers, or use more ranks")
