"""Training: one loop for the three methods of docs/algorithm.md §6 (:mod:`gpubraid.methods`).

One training step: the optimiser asks the closure for J(θ) and ∇J(θ); the closure runs the
method's forward solve (states), loss and regulariser, adjoint solve and the batched gradients;
dot products inside the optimiser are MPI allreduces over the ranks' parameter blocks.  Data are
read on rank 0; inputs stay there (the opening layer is rank 0's), labels go to the last rank
(the head's).
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .backend import resolve_backend
from .config import EXAMPLE_DEFAULTS, TrainConfig  # noqa: F401  (re-exported for users)
from .data import load_dataset
from .errors import Diverged, UserError
from .layer_parallel import LayerParallel
from .methods import SERIAL, make_method
from .model import ResNetODE
from .optim import make_optimizer
from .parallel import Comm
from .resources import check_memory

#: An objective this many times larger than the first one (and than 1) counts as divergence.
EXPLOSION_FACTOR = 1e4


@dataclass
class TrainResult:
    """What a run produced (identical on every rank)."""

    config: dict
    ranks: int
    backend: str
    dtype: str
    objective: float
    train_accuracy: float
    val_accuracy: float
    wall_s: float
    history: list = field(default_factory=list)
    stopped: str = "iterations"

    def metrics(self) -> dict:
        return {"method": self.config["method"], "ranks": self.ranks, "backend": self.backend,
                "dtype": self.dtype, "layers": self.config["layers"], "iterations": len(self.history),
                "objective": self.objective, "train_accuracy": self.train_accuracy,
                "val_accuracy": self.val_accuracy, "wall_s": self.wall_s, "stopped": self.stopped,
                "example": self.config["example"], "optimizer": self.config["optimizer"],
                "version": __version__, "config": self.config, "history": self.history}


class _Data:
    """The data a rank needs: inputs on rank 0, labels on the last rank, sizes everywhere."""

    TAG_LABELS = 1

    def __init__(self, comm: Comm, be, meta, ds):
        rank, P = comm.rank, comm.size
        self.n_train, self.n_val = meta["n_train"], meta["n_val"]
        self.x_train = self.x_val = self.y_train = self.y_val = None
        if rank == 0:
            self.x_train, self.x_val = be.asarray(ds.x_train), be.asarray(ds.x_val)
        labels = (ds.y_train, ds.y_val) if rank == 0 else None
        if P > 1 and rank == 0:
            comm.send_obj(labels, P - 1, self.TAG_LABELS)
        elif P > 1 and rank == P - 1:
            labels = comm.recv_obj(0, self.TAG_LABELS)
        if rank == P - 1:
            self.y_train = be.xp.asarray(labels[0])
            self.y_val = be.xp.asarray(labels[1])


def load_distributed(cfg: TrainConfig, comm: Comm):
    """Rank 0 reads the data set; every rank learns its shape, or the same UserError."""
    ds, meta, err = None, None, None
    if comm.rank == 0:
        try:
            ds = load_dataset(cfg.example, seed=cfg.seed, data_dir=cfg.data_dir, n_train=cfg.n_train,
                              n_val=cfg.n_val)
            meta = {"n_train": ds.n_train, "n_val": ds.n_val, "in_shape": ds.in_shape,
                    "n_classes": ds.n_classes, "kind": ds.kind}
        except UserError as exc:
            err = str(exc)
        except MemoryError:
            err = (f"n_train/n_val: not enough memory for {cfg.n_train} training and {cfg.n_val} "
                   "validation samples")
    meta, err = comm.bcast_obj((meta, err), 0)
    if err is not None:
        raise UserError(err)
    return ds, meta


class Trainer:
    """One training run; build it on every rank of ``comm`` with the same settings.

    Args:
        cfg: the settings (the example's defaults are filled in here).
        comm: the layer communicator (default: one process).
    """

    def __init__(self, cfg: TrainConfig, comm: Comm | None = None):
        self.cfg = cfg = cfg.resolved()
        self.comm = comm = comm if comm is not None else Comm.single()
        self.be = resolve_backend(cfg.backend, cfg.dtype)
        comm.backend = self.be
        ds, meta = load_distributed(cfg, comm)
        self.model = ResNetODE(meta["kind"], meta["in_shape"], cfg.channels, cfg.layers, meta["n_classes"],
                               cfg.final_time, cfg.activation, self.be, cfg.gamma_tik, cfg.gamma_ddt)
        if comm.size > cfg.layers:
            raise UserError(f"number of MPI ranks ({comm.size}) must not exceed --layers ({cfg.layers})")
        step = self.model.step
        full_batch = cfg.batch_size == 0 or cfg.batch_size >= meta["n_train"]
        check_memory(cfg, step.state_shape, sum(math.prod(s) for s in step.param_shapes),
                     meta["n_train"] if full_batch else cfg.batch_size, comm.size, self.be)
        self.method = make_method(cfg)
        self.full_batch = full_batch
        self.lp = LayerParallel(self.model, comm, self.method.forward, self.method.adjoint)
        self.lp_score = LayerParallel(self.model, comm, SERIAL, SERIAL)
        self.data = _Data(comm, self.be, meta, ds)
        full = self.model.layout()
        theta_full = self.be.to_host(self.model.init_params(full, cfg.seed, cfg.init_scale))
        self.theta = self.lp.scatter_params(theta_full)
        self.opt = make_optimizer(cfg.optimizer, dot=self.lp.dot, **cfg.optimizer_settings())

    def _solver_stats(self) -> dict:
        f, b = self.lp.last_stats
        out = {"fwd_iters": f.iterations, "fwd_residual": f.residuals[-1] if f.residuals else None}
        if b is not None:
            out.update(bwd_iters=b.iterations, bwd_residual=b.residuals[-1] if b.residuals else None)
        out["steps"] = int(sum(f.steps_per_level) + f.coarse_steps
                           + (sum(b.steps_per_level) + b.coarse_steps if b else 0))
        return out

    def score(self, split: str) -> tuple[float, float]:
        """(objective, accuracy) on ``split`` ("train" or "val") by layer-serial forward passes,
        in chunks of samples sized so each chunk's states take about 128 MiB."""
        d = self.data
        x = d.x_train if split == "train" else d.x_val
        y = d.y_train if split == "train" else d.y_val
        n = d.n_train if split == "train" else d.n_val
        per_sample = (self.lp.b - self.lp.a + 1) * self.model.state_size * np.dtype(self.be.dtype).itemsize
        chunk = int(min(n, max(1, 2 ** 27 // per_sample)))
        loss, correct, reg = 0.0, 0, 0.0
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            ev = self.lp_score.evaluate(self.theta, None if x is None else x[lo:hi],
                                        None if y is None else y[lo:hi], hi - lo, grad=False)
            loss += ev.loss * (hi - lo)
            correct += ev.n_correct
            reg = ev.objective - ev.loss
        return loss / n + reg, correct / n

    def _batch(self, run: "RunState"):
        """(x, y, B) of the next optimisation step: the full batch, or the next mini-batch of a
        shuffled epoch (one permutation per epoch, as :func:`gpubraid.data.batches` draws it)."""
        cfg, d, xp = self.cfg, self.data, self.be.xp
        if self.full_batch:
            return d.x_train, d.y_train, d.n_train
        if run.order is None or run.pos >= d.n_train:
            run.order, run.pos = run.rng.permutation(d.n_train).astype(np.int64), 0
        idx = run.order[run.pos:run.pos + cfg.batch_size]
        run.pos += len(idx)
        sel = xp.asarray(idx)
        return (None if d.x_train is None else d.x_train[sel],
                None if d.y_train is None else d.y_train[sel], len(idx))

    def _check_divergence(self, it: int, objective: float, first: float) -> None:
        """Raise :class:`Diverged` on a non-finite or exploding objective, saying where."""
        if math.isfinite(objective) and objective <= EXPLOSION_FACTOR * max(abs(first), 1.0):
            return
        what = ("not finite" if not math.isfinite(objective)
                else f"{objective / max(abs(first), 1.0):.1e} times the first")
        where = self._locate_blowup()
        hints = "--init-scale, --final-time" if it == 0 else (
            "--lr" if self.cfg.optimizer != "lbfgs" else "--final-time") + ", --gamma-tik, --gamma-ddt"
        raise Diverged(f"objective {objective:.6g} at iteration {it + 1} is {what}; {where}; "
                       f"options that matter: {hints}")

    def _locate_blowup(self) -> str:
        """Where the first non-finite or exploding value appears: parameters, forward states or
        adjoints, and the layer (a layer-serial pass over up to 256 training samples)."""
        comm, lp, xp = self.comm, self.lp_score, self.be.xp
        k = min(self.data.n_train, 256)
        x = None if self.data.x_train is None else self.data.x_train[:k]
        y = None if self.data.y_train is None else self.data.y_train[:k]

        def first_bad(rows, first_layer: int) -> float:
            """Global index of the first bad row (inf when none) over all ranks."""
            flat = rows.reshape(rows.shape[0], -1)
            bad = ~xp.isfinite(flat).all(axis=1) | (xp.abs(xp.nan_to_num(flat)).max(axis=1) > 1e30)
            where = np.flatnonzero(self.be.to_host(bad))
            local = first_layer + int(where[0]) if where.size else math.inf
            return -comm.allreduce_max(-local)

        if not math.isfinite(comm.allreduce_sum(float(self.be.scalar(xp.abs(self.theta).sum())))):
            return "the parameters are not finite (the previous step overshot)"
        with np.errstate(all="ignore"):
            lp.evaluate(self.theta, x, y, k, grad=True)
        layer = first_bad(lp.U[1:], lp.a + 1)
        if math.isfinite(layer):
            return f"first bad value: forward state after layer {int(layer)} of {self.model.layers}"
        layer = first_bad(lp.Lam[::-1][:-1], lp.a)
        if math.isfinite(layer):
            return f"first bad value: adjoint at layer {int(layer)} of {self.model.layers}"
        big = comm.allreduce_max(float(self.be.scalar(xp.abs(self.theta).max())))
        return (f"states and adjoints are finite on a layer-serial pass, the largest parameter is "
                f"{big:.1e}: the optimiser's steps grew the weights")

    def run(self, progress=None, interrupts=None) -> TrainResult:
        """Train up to ``cfg.iterations`` steps (fewer when the method stops early), continuing
        from a checkpoint when ``cfg.resume`` names one.

        Args:
            progress: ``progress(entry)`` after every step (rank 0's log and bar).
            interrupts: an :class:`~gpubraid.interrupts.Interrupts` polled at every step boundary;
                on a signal a checkpoint is written (when ``cfg.checkpoint_dir`` is set) and
                :class:`~gpubraid.interrupts.Interrupted` propagates.
        """
        cfg = self.cfg
        run = self.restore(cfg.resume) if cfg.resume else RunState(np.random.default_rng([cfg.seed, 7]))
        warm = self.method.warm(self.full_batch)
        t0 = time.perf_counter() - run.elapsed
        from .interrupts import Interrupted

        for it in range(len(run.history), cfg.iterations):
            try:
                if interrupts is not None:
                    interrupts.poll(self.comm)
            except Interrupted:
                if cfg.checkpoint_dir:
                    self.save_checkpoint(run)
                raise
            x, y, B = self._batch(run)

            def closure(theta):
                ev = self.lp.evaluate(theta, x, y, B, grad=True, warm=warm)
                return ev.objective, ev.grad, (ev.accuracy, self._solver_stats())

            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    info = self.opt.step(self.theta, closure)
            except FloatingPointError:  # L-BFGS refuses a non-finite start point
                self._check_divergence(it, math.nan, math.nan if run.first is None else run.first)
            run.first = info.objective if run.first is None else run.first
            self._check_divergence(it, info.objective, run.first)
            accuracy, stats = info.start
            entry = {"iter": it, "objective": info.objective, "grad_norm": info.grad_norm,
                     "train_batch_accuracy": accuracy, "step_size": info.step_size,
                     "n_evals": info.n_evals, **stats, "time_s": time.perf_counter() - t0}
            if cfg.val_every and ((it + 1) % cfg.val_every == 0 or it + 1 == cfg.iterations):
                entry["val_accuracy"] = self.score("val")[1]
            run.history.append(entry)
            run.elapsed = time.perf_counter() - t0
            if progress is not None:
                progress(entry)
            run.failures = run.failures + 1 if info.step_size == 0.0 else 0
            if run.failures:
                if not self.method.go_on_after_failed_line_search(run.failures):
                    run.stopped = "line search failed (no decrease along the L-BFGS direction)"
                    break
                self.opt.reset()
            if cfg.checkpoint_dir and cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0:
                self.save_checkpoint(run)
        if cfg.checkpoint_dir:
            self.save_checkpoint(run)
        objective, train_acc = self.score("train")
        val = self.score("val")[1]
        return TrainResult(cfg.model_dump(), self.comm.size, self.be.name, self.be.dtype_name,
                           objective, train_acc, val, time.perf_counter() - t0, run.history, run.stopped)

    # -- checkpoints ----------------------------------------------------------------------------
    #: Settings that may differ between a run and its resumption (output, length, where to save).
    RESUMABLE_CHANGES = ("iterations", "val_every", "metrics", "progress", "checkpoint_dir",
                         "checkpoint_every", "resume", "backend")

    def _gather(self, vec) -> np.ndarray | None:
        return self.lp.gather_params(vec)

    def save_checkpoint(self, run: "RunState") -> None:
        """Write the run's state to ``cfg.checkpoint_dir`` (rank 0 writes; every rank takes part)."""
        comm, be = self.comm, self.be
        vectors, scalars = self.opt.state()
        arrays = {"theta": self._gather(self.theta)}
        for name, vec in sorted(vectors.items()):
            arrays[f"opt.{name}"] = self._gather(vec)
        for name in ("U", "Lam"):
            rows = getattr(self.lp, name)
            parts = comm.gather_obj(None if rows is None else be.to_host(rows), 0)
            if comm.rank == 0 and all(p is not None for p in parts):
                arrays.update({f"warm.{name}.{r}": p for r, p in enumerate(parts)})
        if run.order is not None:
            arrays["batch_order"] = run.order
        if comm.rank != 0:
            return
        from . import checkpoint

        meta = {"config": self.cfg.model_dump(), "ranks": comm.size, "history": run.history,
                "optimizer": scalars, "rng": run.rng.bit_generator.state, "pos": run.pos,
                "failures": run.failures, "first": run.first, "elapsed": run.elapsed,
                "stopped": run.stopped}
        checkpoint.save(self.cfg.checkpoint_dir, len(run.history), arrays, meta)

    def restore(self, directory: str) -> "RunState":
        """Load the newest checkpoint of ``directory`` into this trainer; returns the loop state.

        On the rank count that wrote it the run continues bit for bit (warm-start rows included);
        on another it continues from the parameters and the optimiser state.
        """
        from . import checkpoint

        comm, be = self.comm, self.be
        loaded, err = None, None
        if comm.rank == 0:
            try:
                arrays, meta, path = checkpoint.load_latest(directory)
                mine = self.cfg.model_dump()
                for key, value in meta["config"].items():
                    if key not in self.RESUMABLE_CHANGES and mine.get(key) != value:
                        raise UserError(f"resume: {key} is {mine.get(key)!r} here but {value!r} in {path!r}; "
                                        "resume with the settings of the interrupted run")
                loaded = (arrays, meta)
            except UserError as exc:
                err = str(exc)
        loaded, err = comm.bcast_obj((loaded, err), 0)
        if err is not None:
            raise UserError(err)
        arrays, meta = loaded
        self.theta[...] = self.lp.scatter_params(arrays["theta"])
        vectors = {k[4:]: self.lp.scatter_params(v) for k, v in arrays.items() if k.startswith("opt.")}
        self.opt.load_state(vectors, meta["optimizer"], self.theta)
        if meta["ranks"] == comm.size:
            for name in ("U", "Lam"):
                rows = arrays.get(f"warm.{name}.{comm.rank}")
                setattr(self.lp, name, None if rows is None else be.asarray(rows))
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
        return RunState(rng, arrays.get("batch_order"), meta["pos"], meta["history"], meta["failures"],
                        meta["first"], meta["elapsed"], meta["stopped"])


@dataclass
class RunState:
    """Where a training loop stands: everything a checkpoint must keep besides the arrays."""

    rng: np.random.Generator
    order: np.ndarray | None = None      # this epoch's sample permutation (mini-batches)
    pos: int = 0                         # next position in ``order``
    history: list = field(default_factory=list)
    failures: int = 0                    # consecutive failed line searches
    first: float | None = None           # the first step's objective (divergence guard)
    elapsed: float = 0.0                 # training seconds before this process
    stopped: str = "iterations"


def write_json_atomic(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file (never half-written)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"metrics: directory {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gpubraid-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=float)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def print_summary(res: TrainResult, file=sys.stdout) -> None:
    c = res.config
    print(f"gpubraid {c['method']} training of {c['example']}: {c['layers']} layers x {c['channels']} "
          f"channels, {res.ranks} rank(s), {res.backend}/{res.dtype}", file=file)
    print(f"  iterations      {len(res.history)}  ({res.stopped})", file=file)
    print(f"  objective       {res.objective:.6g}", file=file)
    print(f"  train accuracy  {res.train_accuracy:.4f}", file=file)
    print(f"  val accuracy    {res.val_accuracy:.4f}", file=file)
    print(f"  wall time       {res.wall_s:.1f} s", file=file)
