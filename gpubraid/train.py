"""Training: the three methods of ALGORITHM.md §4 behind one loop.

    serial   layer-by-layer forward propagation and backprop (the baseline and the reference)
    exact    forward and adjoint MGRIT to tight tolerances every optimisation step
    oneshot  a fixed small number of forward and adjoint MGRIT iterations per step, warm-started
             from the previous step's states and adjoints (full batch); with mini-batches the
             initial guess is u_0 (resp. λ_N) at every point, since the samples change each step

One training step: the optimiser asks the closure for J(θ) and ∇J(θ); the closure runs the
method's forward solve (states), loss and regulariser, adjoint solve and the batched gradients;
dot products inside the optimiser are MPI allreduces over the ranks' parameter blocks.  Data are
read on rank 0; inputs stay there (the opening layer is rank 0's), labels go to the last rank
(the classifier's).
"""
from __future__ import annotations

import dataclasses
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
from .data import DATASETS, batches, load_dataset
from .errors import UserError, check_positive_float, check_positive_int
from .layer_parallel import LayerParallel
from .mgrit import MGRITOptions
from .model import ResNetODE
from .optim import OPTIMIZERS, make_optimizer
from .parallel import Comm

METHODS = ("serial", "exact", "oneshot")


@dataclass
class TrainConfig:
    """Every setting of a training run (CLI options and TOML keys use the same names).

    ``None`` means "the example's default" (see :data:`EXAMPLE_DEFAULTS`).
    """

    example: str = "peaks"
    layers: int | None = None
    channels: int | None = None
    final_time: float | None = None
    activation: str | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    memory: int = 10
    batch_size: int | None = None          # 0: full batch
    iterations: int | None = None
    seed: int = 0
    dtype: str = "float64"
    backend: str = "auto"
    method: str = "oneshot"
    gamma_tik: float | None = None
    gamma_ddt: float | None = None
    init_scale: float = 1.0
    # MGRIT
    cfactor: int = 2                       # XBraid's default and the paper's peaks setting
    max_levels: int = 10
    nrelax: int = 1                        # CF sweeps on the coarse levels (1: FCF)
    nrelax_fine: int | None = 0            # CF sweeps on level 0 (None: as nrelax; 0: F-relaxation)
    cfactor_fine: int | None = None        # coarsening factor of level 0 (None: as cfactor)
    min_coarse: int = 2
    stability: float = 1.0                 # coarsen while max(H_l)·ρ(∂f/∂u) ≤ this (0: all levels)
    conv_bound: float = 0.1                # ... and while ½·T·ρ²·max(H_l) ≤ this (0: no such limit)
    nested: bool = True                    # no warm start: nested-iteration initial guess
    minibatch_warm: bool = False           # oneshot mini-batch: warm-start from the previous batch's solves
    adaptive: float = 0.0                  # oneshot: stop a solve when residual ≤ adaptive·‖∇J‖ (0: off)
    fwd_iters: int = 1                     # oneshot: forward iterations per step (cap when adaptive)
    bwd_iters: int = 1                     # oneshot: adjoint iterations per step (cap when adaptive)
    tol: float = 1e-9                      # exact: absolute tolerance of both solves
    max_iter: int = 50                     # exact: at most this many iterations per solve
    # data and output
    n_train: int | None = None
    n_val: int | None = None
    data_dir: str | None = None
    val_every: int = 10
    metrics: str | None = None
    progress: bool = True

    def resolved(self) -> "TrainConfig":
        """A copy with the example's defaults filled in, every value checked."""
        if self.example not in DATASETS:
            raise UserError(f"example must be one of {', '.join(DATASETS)}; got {self.example!r}")
        values = dataclasses.asdict(self)
        for k, v in EXAMPLE_DEFAULTS[self.example].items():
            if values.get(k) is None:
                values[k] = v
        cfg = TrainConfig(**values)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        check_positive_int("layers", self.layers)
        check_positive_int("channels", self.channels)
        check_positive_float("final_time", self.final_time)
        if self.method not in METHODS:
            raise UserError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        check_positive_int("iterations", self.iterations)
        check_positive_int("batch_size", self.batch_size, 0)
        check_positive_int("seed", self.seed, 0)
        check_positive_int("fwd_iters", self.fwd_iters, 0)
        check_positive_int("bwd_iters", self.bwd_iters, 0)
        check_positive_int("val_every", self.val_every, 0)
        if not (isinstance(self.adaptive, (int, float)) and self.adaptive >= 0 and math.isfinite(self.adaptive)):
            raise UserError(f"adaptive must be a finite number >= 0; got {self.adaptive!r}")
        check_positive_float("init_scale", self.init_scale)
        if self.optimizer == "lbfgs" and self.batch_size:
            raise UserError("optimizer lbfgs is full-batch: use --batch-size 0, or sgd/adam for mini-batches")
        if self.optimizer != "lbfgs" and not self.lr:
            raise UserError(f"optimizer {self.optimizer} needs --lr > 0")
        for name in ("gamma_tik", "gamma_ddt"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise UserError(f"{name} must be a finite number >= 0; got {v!r}")
        self.mgrit(exact=True)

    def mgrit(self, exact: bool) -> MGRITOptions:
        """MGRIT options: converged solves (``exact``) or fixed one-shot iteration counts."""
        nrelax = self.nrelax if self.nrelax_fine is None else [self.nrelax_fine, self.nrelax]
        cfactor = self.cfactor if self.cfactor_fine is None else [self.cfactor_fine, self.cfactor]
        common = dict(cfactor=cfactor, max_levels=self.max_levels, nrelax=nrelax,
                      min_coarse=self.min_coarse, stability=self.stability, conv_bound=self.conv_bound,
                      nested=self.nested)
        if exact:
            # converged solves: every stable level helps (conv_bound is about one-shot's few iterations)
            common["conv_bound"] = 0.0
            return MGRITOptions(tol=self.tol, max_iter=self.max_iter, **common).validate()
        return MGRITOptions(tol=0.0, max_iter=self.fwd_iters, final_residual=False, **common).validate()

    def optimizer_settings(self) -> dict:
        if self.optimizer == "lbfgs":
            return {"memory": self.memory}
        if self.optimizer == "sgd":
            return {"lr": self.lr, "momentum": self.momentum}
        return {"lr": self.lr}


# The embedded defaults per example: small enough for a laptop, tuned to train well.
EXAMPLE_DEFAULTS = {
    "peaks": dict(layers=32, channels=8, final_time=5.0, activation="tanh", optimizer="lbfgs",
                  batch_size=0, iterations=150, gamma_tik=1e-5, gamma_ddt=1e-5, lr=None),
    "mnist": dict(layers=16, channels=8, final_time=2.0, activation="relu", optimizer="adam",
                  batch_size=50, iterations=600, gamma_tik=1e-3, gamma_ddt=0.0, lr=3e-3),
    "indianpines": dict(layers=16, channels=32, final_time=2.0, activation="tanh", optimizer="adam",
                        batch_size=100, iterations=1000, gamma_tik=0.0, gamma_ddt=0.0, lr=1e-3),
}


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

    def __init__(self, comm: Comm | None, be, meta, ds):
        rank = comm.rank if comm is not None else 0
        P = comm.size if comm is not None else 1
        self.n_train, self.n_val = meta["n_train"], meta["n_val"]
        self.x_train = self.x_val = self.y_train = self.y_val = None
        if rank == 0:
            self.x_train, self.x_val = be.asarray(ds.x_train), be.asarray(ds.x_val)
        labels = (ds.y_train, ds.y_val) if rank == 0 else None
        if P > 1:
            if rank == 0:
                comm.comm.send(labels, dest=P - 1, tag=1)
            elif rank == P - 1:
                labels = comm.comm.recv(source=0, tag=1)
        if rank == P - 1:
            self.y_train = be.xp.asarray(labels[0])
            self.y_val = be.xp.asarray(labels[1])


def load_distributed(cfg: TrainConfig, comm: Comm | None):
    """Rank 0 reads the data set; every rank learns its shape, or the same UserError."""
    rank = comm.rank if comm is not None else 0
    ds, meta, err = None, None, None
    if rank == 0:
        try:
            ds = load_dataset(cfg.example, seed=cfg.seed, data_dir=cfg.data_dir, n_train=cfg.n_train,
                              n_val=cfg.n_val)
            meta = {"n_train": ds.n_train, "n_val": ds.n_val, "in_shape": ds.in_shape,
                    "n_classes": ds.n_classes, "kind": ds.kind}
        except UserError as exc:
            err = str(exc)
    if comm is not None:
        meta, err = comm.bcast_obj((meta, err), 0)
    if err is not None:
        raise UserError(err)
    return ds, meta


class Trainer:
    """One training run; build it on every rank of ``comm`` with the same config."""

    def __init__(self, cfg: TrainConfig, comm: Comm | None = None, log=None):
        self.cfg = cfg = cfg.resolved()
        self.comm = comm
        self.rank = comm.rank if comm is not None else 0
        self.P = comm.size if comm is not None else 1
        self.log = log if log is not None else (lambda msg: None)
        self.be = resolve_backend(cfg.backend, cfg.dtype)
        ds, meta = load_distributed(cfg, comm)
        self.model = ResNetODE(meta["kind"], meta["in_shape"], cfg.channels, cfg.layers, meta["n_classes"],
                               cfg.final_time, cfg.activation, self.be, cfg.gamma_tik, cfg.gamma_ddt)
        if self.P > cfg.layers:
            raise UserError(f"number of MPI ranks ({self.P}) must not exceed --layers ({cfg.layers})")
        exact = cfg.mgrit(exact=True)
        if cfg.method == "serial":
            fwd = bwd = dataclasses.replace(exact, max_levels=1)
        elif cfg.method == "exact":
            fwd = bwd = exact
        else:
            fwd = cfg.mgrit(exact=False)
            bwd = dataclasses.replace(fwd, max_iter=cfg.bwd_iters)
        self.lp = LayerParallel(self.model, comm, fwd, bwd)
        # validation and final accuracy: the same distributed forward solve, converged
        self.lp_eval = self.lp if cfg.method != "oneshot" else LayerParallel(self.model, comm, exact, exact)
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
        # every step application of the evaluation (all levels, coarsest solve, stability estimate,
        # forward and adjoint): serial counts N + N
        out["steps"] = f.total_steps + (b.total_steps if b else 0.0)
        out["levels"] = f.levels
        if f.rho is not None:
            out["rho"] = f.rho
            out["h_rho"] = f.h_rho[-1] if f.h_rho else 0.0
        return out

    def score(self, split: str) -> tuple[float, float]:
        """(objective, accuracy) on ``split`` ("train" or "val") by the converged distributed
        forward solve, in chunks of samples sized so each chunk's states take about 128 MiB."""
        d = self.data
        x = d.x_train if split == "train" else d.x_val
        y = d.y_train if split == "train" else d.y_val
        n = d.n_train if split == "train" else d.n_val
        per_sample = (self.lp.b - self.lp.a + 1) * self.model.state_size * np.dtype(self.be.dtype).itemsize
        chunk = int(min(n, max(1, 2 ** 27 // per_sample)))
        loss, correct, reg = 0.0, 0, 0.0
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            ev = self.lp_eval.evaluate(self.theta, None if x is None else x[lo:hi],
                                       None if y is None else y[lo:hi], hi - lo, grad=False)
            loss += ev.loss * (hi - lo)
            correct += ev.n_correct
            reg = ev.objective - ev.loss
        return loss / n + reg, correct / n

    def accuracy(self, split: str) -> float:
        """Fraction of ``split`` ("train" or "val") classified correctly (distributed forward)."""
        return self.score(split)[1]

    def run(self, progress=None) -> TrainResult:
        cfg, d = self.cfg, self.data
        rng = np.random.default_rng([cfg.seed, 7])
        full_batch = cfg.batch_size == 0 or cfg.batch_size >= d.n_train
        # one-shot warm start: full batch always; mini-batches only on request (the previous
        # batch's states belong to other samples; the nested-iteration guess is better, see
        # bench/oneshot_study.py)
        warm = cfg.method == "oneshot" and (full_batch or cfg.minibatch_warm)
        batch_iter = None
        history, calls = [], []
        t0 = time.perf_counter()
        stopped = "iterations"
        failures = 0
        for it in range(cfg.iterations):
            if full_batch:
                idx = None
            else:
                try:
                    idx = next(batch_iter) if batch_iter is not None else None
                except StopIteration:
                    idx = None
                if idx is None:
                    batch_iter = batches(d.n_train, cfg.batch_size, rng)
                    idx = next(batch_iter)
            x = d.x_train if idx is None or d.x_train is None else d.x_train[self.be.xp.asarray(idx)]
            y = d.y_train if idx is None or d.y_train is None else d.y_train[self.be.xp.asarray(idx)]
            B = d.n_train if idx is None else len(idx)
            prev = calls[-1] if calls else None
            calls.clear()

            def closure(theta):
                ev = self.lp.evaluate(theta, x, y, B, grad=True, warm=warm)
                if not math.isfinite(ev.objective):
                    raise FloatingPointError(f"objective is {ev.objective} at iteration {it}; "
                                             "lower --lr or --final-time")
                calls.append((ev.objective, ev.accuracy, self._solver_stats()))
                return ev.objective, ev.grad

            info = self.opt.step(self.theta, closure)
            if cfg.adaptive > 0 and cfg.method == "oneshot":
                # adaptive one-shot: the next solves stop once their residual is below
                # adaptive·‖∇J‖ (fwd_iters / bwd_iters stay the caps)
                self.lp.fwd_tol = self.lp.bwd_tol = cfg.adaptive * info.grad_norm
            start = next((c for c in ([prev] if prev else []) + calls if c[0] == info.objective), calls[0])
            entry = {"iter": it, "objective": info.objective, "grad_norm": info.grad_norm,
                     "train_batch_accuracy": start[1], "step_size": info.step_size,
                     "n_evals": info.n_evals, **start[2], "time_s": time.perf_counter() - t0}
            if cfg.val_every and ((it + 1) % cfg.val_every == 0 or it + 1 == cfg.iterations):
                entry["val_accuracy"] = self.accuracy("val")
            history.append(entry)
            if progress is not None:
                progress(entry)
            if info.step_size == 0.0:
                # With one-shot gradients the line search can fail on solver noise: forget the
                # curvature pairs and go on from steepest descent; a converged method has reached
                # its precision and stops.
                failures += 1
                if cfg.method != "oneshot" or failures >= 3:
                    stopped = "line search failed (no decrease along the L-BFGS direction)"
                    break
                self.opt.reset()
            else:
                failures = 0
        wall = time.perf_counter() - t0
        objective, train_acc = self.score("train")
        val = self.accuracy("val")
        return TrainResult(dataclasses.asdict(cfg), self.P, self.be.name, self.be.dtype_name,
                           objective, train_acc, val, wall, history, stopped)


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
