"""Multilevel initialisation in depth (``--depth-levels k``): train N/2^k layers, then N/2^(k-1),
..., N/2, each network started from the previous one's parameters interpolated in depth, and start
the N-layer run from the last of them.

The residual layers discretise an ODE in depth: layer n of N applies θ(t) on [nh, (n+1)h), h = T/N.
A network of N/2 layers gives θ on a grid twice as coarse; :func:`prolong` hands each coarse layer's
parameters to the two fine layers that split its interval (the same piecewise-constant θ(t), so the
same ODE up to the step size) and keeps the opening and the head.  Coarse networks are cheaper per
step by their depth, so their steps buy a good starting point for the fine run at a fraction of
its cost; every method, optimiser and rank layout trains them as it trains the fine network.
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import UserError


def prolong(coarse, fine, theta: np.ndarray) -> np.ndarray:
    """The full parameter vector of ``fine`` (2N layers) from ``theta`` of ``coarse`` (N layers).

    Args:
        coarse, fine: :class:`~gpubraid.network.network.Network` of N and 2N layers with the same
            step, opening and head.
        theta: float64 host vector, ``coarse.layout().size``.

    Returns:
        float64 host vector of ``fine.layout().size``: layers 2n and 2n + 1 carry coarse layer n's
        groups, the opening and head groups are copied.
    """
    if fine.layers != 2 * coarse.layers:
        raise ValueError(f"prolong: {coarse.layers} coarse layers do not halve {fine.layers}")
    src = coarse.layout().views(np.asarray(theta, dtype=np.float64))
    out = np.zeros(fine.layout().size)
    dst = fine.layout().views(out)
    for name in dst.names():
        if name in fine.layer_names:
            dst[name][...] = np.repeat(src[name], 2, axis=0)
        else:
            dst[name][...] = src[name]
    return out


def check(cfg, layer_ranks: int) -> None:
    """UserError unless ``cfg.depth_levels`` fits the run: N divisible by 2^k, the coarsest network
    at least one layer per layer rank, and no ``--init`` (which gives the start already)."""
    k = cfg.depth_levels
    if not k:
        return
    if cfg.init is not None:
        raise UserError("depth_levels: not with --init (the model file already gives the starting parameters)")
    if cfg.layers % 2**k:
        raise UserError(f"depth_levels {k}: --layers ({cfg.layers}) must be divisible by 2^{k} = {2**k}")
    if cfg.layers >> k < layer_ranks:
        raise UserError(f"depth_levels {k}: the coarsest network ({cfg.layers >> k} layers) needs at least one "
                        f"layer per layer rank ({layer_ranks}); use fewer depth levels")


def coarse_start(trainer, data, step, progress, interrupts, warn) -> tuple[np.ndarray, float, list]:
    """Train ``trainer``'s network at N/2^k, ..., N/2 layers (``cfg.depth_iterations`` steps each).

    Args:
        trainer: the N-layer :class:`~gpubraid.training.trainer.Trainer`; its settings, ranks, data
            (``data``) and step (``step``) are reused.
        progress, interrupts, warn: as for :meth:`Trainer.run`; history entries carry ``layers``.

    Returns:
        (the full N-layer parameter vector, float64 host; the seconds spent; the coarse networks'
        history entries, each with ``layers``).
    """
    cfg, t0 = trainer.cfg, time.perf_counter()
    theta, previous, entries = None, None, []
    for k in range(cfg.depth_levels, 0, -1):
        sub = cfg.model_copy(update=dict(layers=cfg.layers >> k, iterations=cfg.depth_iterations, depth_levels=0,
                                         save=None, metrics=None, checkpoint_dir=None, resume=None, val_every=0,
                                         trace=None))
        coarse = type(trainer)(sub, trainer.world, data=data, step=step)
        if previous is not None:
            coarse.theta[...] = coarse.lp.scatter_params(prolong(previous, coarse.model, theta))

        def report(entry, layers=sub.layers):
            entry["layers"] = layers
            entries.append(entry)
            if progress is not None:
                progress(entry)

        coarse.run(progress=report, interrupts=interrupts, warn=warn)
        theta, previous = trainer.world.bcast_obj(coarse.lp.gather_params(coarse.theta), 0), coarse.model
    return prolong(previous, trainer.model, theta), time.perf_counter() - t0, entries
