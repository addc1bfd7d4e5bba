"""Training: one loop for the three methods of docs/algorithm.md §6 (:mod:`gpubraid.training.methods`).

One training step: the optimiser asks the closure for J(θ) and ∇J(θ); the closure runs the
method's forward solve (states), loss and regulariser, adjoint solve and the batched gradients;
dot products inside the optimiser are MPI allreduces over the ranks' parameter blocks.  Data are
read on rank 0; inputs stay there (the opening layer is rank 0's), labels go to the last rank
(the head's).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..data.dataset import next_batch
from ..data.distribute import RankData, load_distributed
from ..errors import UserError
from ..network.network import network_for_data
from ..network.spec import layer_spec, network_from_spec
from ..objective.inference import Pipeline
from ..objective.layer_parallel import LayerParallel
from ..runtime import trace as tracing
from ..runtime.allocator import keep_freed_memory
from ..runtime.atomic import WriteError
from ..runtime.backend import resolve_backend
from ..runtime.comm import Comm
from ..runtime.interrupts import Interrupted
from ..runtime.resources import check_memory
from . import depth
from .config import MINIBATCH_ESTIMATE_EVERY, TrainConfig
from .diagnose import check_divergence, stall
from .methods import SERIAL, level_cap_note, make_method
from .monitor import Monitor
from .optim import make_optimizer
from .report import TrainResult


class Trainer:
    """One training run; build it on every rank of ``comm`` with the same settings.

    Args:
        cfg: the settings (the defaults of the example or of the data's network are filled in).
        comm: all ranks of the run (default: one process); with ``cfg.data_parallel`` = D they
            form D data groups of P/D layer ranks (:meth:`~gpubraid.runtime.comm.Comm.grid`).
        data: your own data instead of ``cfg.example`` / ``cfg.data``: a
            :class:`~gpubraid.data.dataset.Dataset` or arrays ``(x_train, y_train[, x_val, y_val])``
            (integer labels: classification; float targets: regression), needed on rank 0 only.
        step: your own residual step object (the protocol of :mod:`gpubraid.network.steps`) instead of
            ``cfg.layer``; build the same one on every rank.

    Files never make it import anything: an ``cfg.init`` model file or ``cfg.resume`` checkpoint
    whose step names an import path needs that step from ``step`` or ``cfg.layer``, or ``cfg.trust``.
    """

    def __init__(self, cfg: TrainConfig, comm: Comm | None = None, *, data=None, step=None):
        if data is not None and cfg.example is None and cfg.data is None:
            cfg = cfg.model_copy(update={"data": "<arrays>"})
        cfg.resolved()  # every setting checked before any work
        keep_freed_memory()  # the same large arrays every step: reuse, not fresh page faults
        self.world = world = comm if comm is not None else Comm.single()
        cfg, self.plan = resolve_method(cfg, world, data, step)  # --method auto: the planner's choice
        self.comm, self.data_comm = comm, data_comm = world.grid(cfg.data_parallel)
        ds, meta = load_distributed(cfg, world, data)
        self.meta = meta
        self.result: TrainResult | None = None  # the last finished run's
        self.depth_history: list = []  # the coarse networks' steps (cfg.depth_levels)
        self.cfg = cfg = cfg.resolved(meta["kind"])
        self.be = resolve_backend(cfg.backend, cfg.dtype)
        for c in (world, comm, data_comm):
            c.backend = self.be
        self.resumed = self._read_checkpoint() if cfg.resume else None  # may take cfg.layer (trust)
        self.model = self._network(meta, step)
        if comm.size > cfg.layers:
            raise UserError(f"layer ranks ({comm.size} = MPI ranks / --data-parallel) must not exceed "
                            f"--layers ({cfg.layers})")
        depth.check(cfg, comm.size)
        self._source = (data, step)  # what the coarse networks of cfg.depth_levels train on
        self.full_batch = cfg.batch_size == 0 or cfg.batch_size >= meta["n_train"]
        batch = meta["n_train"] if self.full_batch else cfg.batch_size
        if batch < data_comm.size:
            raise UserError(f"data_parallel ({data_comm.size}) must not exceed the batch ({batch} samples)")
        _check_memory(cfg, self.model, batch, data_comm.size, comm.size, self.be)
        self.method = make_method(cfg, comm.size)
        self.level_cap = level_cap_note(cfg, self.method, comm.size)  # in the metrics and the log
        self.lp = LayerParallel(self.model, comm, self.method.forward, self.method.adjoint, data_comm,
                                self.method.pipeline)
        self.lp.estimate_every = cfg.estimate_every or (1 if self.full_batch else MINIBATCH_ESTIMATE_EVERY)
        self.lp_serial = LayerParallel(self.model, comm, SERIAL, SERIAL)
        self.monitor = Monitor(cfg.monitor_every if cfg.method == "oneshot" else 0, cfg.monitor_tol,
                               getattr(self.lp.fwd, "n_levels", 1))
        self.pipeline = Pipeline(self.model, comm, self.lp.bounds)
        self.data = RankData(world, comm, data_comm, self.be, meta, ds, bool(self.lp.pipe and self.lp.pipe.both_ends))
        with np.errstate(all="ignore"):  # huge --init-scale: the divergence line says so
            self.theta = self.lp.scatter_params(self._initial_parameters())
        self.opt = make_optimizer(cfg.optimizer, dot=self.lp.dot, sums=self.lp.comm.allreduce_sums,
                                  **cfg.optimizer_settings())

    def _network(self, meta: dict, step):
        """The network for the data: the given step, ``cfg.layer``, or dense/conv by the data; with
        ``cfg.init`` and ``cfg.trust``, the step the model file names (:func:`modelfile.init_step_spec`)."""
        cfg = self.cfg
        kw = dict(layers=cfg.layers, final_time=cfg.final_time, gamma_tik=cfg.gamma_tik,
                  gamma_ddt=cfg.gamma_ddt)
        spec = None if step is not None else layer_spec(cfg, meta)
        if cfg.init is not None:
            from ..io import modelfile

            supplied = step is not None or cfg.layer not in (None, "dense", "conv")
            self._init_tensors, spec = modelfile.init_step_spec(cfg.init, spec, supplied, cfg.trust)
        if spec is None:
            return network_for_data(meta, step, backend=self.be, **kw)
        # named by the user (--layer) or, with --trust, by the --init file
        return network_from_spec(meta, {"step": spec, **kw}, self.be, trust=True)

    def _initial_parameters(self) -> np.ndarray:
        """Random (seeded, rank-independent) initial parameters, or those of ``cfg.init``."""
        if self.cfg.init is None:
            return self.be.to_host(self.model.init_params(self.model.layout(), self.cfg.seed, self.cfg.init_scale))
        from ..io import modelfile

        return modelfile.parameters(self.model, self._init_tensors, self.cfg.init)

    def score(self, split: str) -> dict:
        """Objective, loss and (classification) accuracy on ``split`` ("train" or "val") by one
        forward pass without MGRIT: layer-serial propagation of sample chunks, pipelined over the
        ranks (:class:`~gpubraid.objective.inference.Pipeline`)."""
        x, y, k = self.data.take(split, None, self.be.xp)
        P = self.lp.layout.views(self.theta)
        loss_sum, correct, _ = self.pipeline.run(P, x, k, y)
        d = self.data_comm
        n = self.data.n_train if split == "train" else self.data.n_val
        loss = d.sum_in_rank_order(loss_sum) / n
        correct = int(round(d.allreduce_sum(float(correct))))
        accuracy = correct / n if self.model.task == "classification" else None
        return {"objective": loss + self.lp.regularizer(self.theta), "loss": loss, "accuracy": accuracy}

    def save(self, path: str) -> None:
        """Write the trained model to ``path`` (rank 0 writes; every rank takes part and raises
        :class:`~gpubraid.runtime.atomic.WriteError` when it could not be written)."""
        from ..io import modelfile

        full = self.lp.gather_params(self.theta)
        written_on_root(self.world, lambda: modelfile.save(path, self.model, full, self.meta, self.cfg.model_dump()))

    def _batch(self, run: "RunState"):
        """(x, y, B) of the next optimisation step, this data group's share: of the full batch,
        or of the next mini-batch of a shuffled epoch (:func:`gpubraid.data.dataset.next_batch`;
        every rank draws the same)."""
        if self.full_batch:
            return self.data.take("train", None, self.be.xp)
        idx, run.order, run.pos = next_batch(self.data.n_train, self.cfg.batch_size, run.rng, run.order, run.pos)
        return self.data.take("train", idx, self.be.xp)

    def run(self, progress=None, interrupts=None, warn=None) -> TrainResult:
        """Train up to ``cfg.iterations`` steps (fewer when the method stops early), continuing
        from a checkpoint when ``cfg.resume`` names one.

        Args:
            progress: ``progress(entry)`` after every step (rank 0's log and bar).
            interrupts: an :class:`~gpubraid.runtime.interrupts.Interrupts` polled at every step boundary;
                on a signal a checkpoint is written (when ``cfg.checkpoint_dir`` is set) and
                :class:`~gpubraid.runtime.interrupts.Interrupted` propagates.
            warn: ``warn(line)`` for a warning (a stalled objective, a skipped checkpoint);
                default :func:`warnings.warn`.

        Raises:
            Diverged: the objective blew up (the message names the cause); NumPy's own overflow
                warnings are kept off stderr.
            WriteError: a checkpoint or the model (``cfg.save``) could not be written (on every
                rank); the finished run's result is then :attr:`result`.
        """
        warn = warn or (lambda line: warnings.warn(line, RuntimeWarning, stacklevel=3))
        if interrupts is not None:
            interrupts.polling = True
        try:
            with np.errstate(all="ignore"):
                return self._run(progress, interrupts, warn)
        finally:
            if interrupts is not None:
                interrupts.polling = False
            tracing.stop()  # a run that did not finish writes no trace

    def _run(self, progress, interrupts, warn) -> TrainResult:
        cfg = self.cfg
        run = self.restore(warn) if self.resumed else RunState(np.random.default_rng([cfg.seed, 7]))
        if cfg.depth_levels and not self.resumed:
            theta, run.elapsed, self.depth_history = depth.coarse_start(self, *self._source, progress, interrupts, warn)
            self.theta[...] = self.lp.scatter_params(theta)
        warm = self.method.warm(self.full_batch)
        tracer = tracing.start(self.world, self.be.synchronize if self.be.is_gpu else None) if cfg.trace else None
        t0 = time.perf_counter() - run.elapsed
        loop_start = time.perf_counter()

        for it in range(len(run.history), cfg.iterations):
            try:
                if interrupts is not None:
                    interrupts.poll(self.world)
            except Interrupted:
                if cfg.checkpoint_dir:
                    self.save_checkpoint(run)
                raise
            x, y, B = self._batch(run)
            self.lp.new_step(it)
            checked = {} if self.monitor.due(it, run.failures) else None

            def closure(theta):
                ev = self.lp.evaluate(theta, x, y, B, grad=True, warm=warm)
                stats = self.lp.solve_stats()
                if checked == {}:  # the step's first evaluation against serial's gradient
                    checked.update(self.monitor.check(self.lp, theta, x, y, B, ev, stats["levels"], it))
                return ev.objective, ev.grad, (ev.accuracy, stats)

            try:
                info = self.opt.step(self.theta, closure)
            except FloatingPointError:  # L-BFGS refuses a non-finite start point
                check_divergence(self, it, math.nan, math.nan if run.first is None else run.first)
            self.lp.fwd_tol = self.lp.bwd_tol = self.method.tolerance(info.grad_norm)
            run.first = info.objective if run.first is None else run.first
            check_divergence(self, it, info.objective, run.first)
            accuracy, stats = info.start
            entry = {"iter": it, "objective": info.objective, "grad_norm": info.grad_norm,
                     "train_batch_accuracy": accuracy, "step_size": info.step_size,
                     "n_evals": info.n_evals, **stats, "time_s": time.perf_counter() - t0}
            if checked and self.monitor.worth_recording(checked):
                entry["monitor"] = checked
                entry["steps"] += checked["steps"]
            if cfg.val_every and ((it + 1) % cfg.val_every == 0 or it + 1 == cfg.iterations):
                val = self.score("val")
                entry["val_loss"] = val["loss"]
                if val["accuracy"] is not None:
                    entry["val_accuracy"] = val["accuracy"]
            run.history.append(entry)
            tracing.mark("iteration")  # one per entry of the history (what the replay's marks count)
            run.elapsed = time.perf_counter() - t0
            if progress is not None:
                progress(entry)
            line = None if run.warned else stall(self, run.history)
            if line:
                warn(line)
                run.warned = True
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
        wall = time.perf_counter() - t0
        if tracer is not None:
            tracing.finish(tracer, self.world, cfg.trace, "wall" if self.be.is_gpu else "thread",
                           {"config": cfg.model_dump(), "ranks": self.world.size, "backend": self.be.name,
                            "steps": len(run.history), "loop_s": time.perf_counter() - loop_start})
        train, val = self.score("train"), self.score("val")
        self.result = TrainResult(cfg.model_dump(), self.world.size, self.be.name, self.be.dtype_name,
                                  train["objective"], train["loss"], val["loss"], train["accuracy"], val["accuracy"],
                                  wall, run.history, run.stopped, self.depth_history, self.plan, self.level_cap)
        if cfg.save:
            self.save(cfg.save)
        return self.result

    # -- checkpoints ----------------------------------------------------------------------------
    #: Settings that may differ between a run and its resumption (output, length, where to save).
    RESUMABLE_CHANGES = ("iterations", "val_every", "metrics", "progress", "checkpoint_dir",
                         "checkpoint_every", "resume", "backend", "save", "init", "data_parallel", "trust",
                         "depth_levels", "depth_iterations", "trace")

    def save_checkpoint(self, run: "RunState") -> None:
        """Write the run's state to ``cfg.checkpoint_dir`` (rank 0 writes; every rank takes part and
        raises :class:`~gpubraid.runtime.atomic.WriteError` when it could not be written)."""
        from ..io.checkpoint import save

        world, be = self.world, self.be
        vectors, scalars = self.opt.state()  # identical in every data group: group 0's are kept
        arrays = {"theta": self.lp.gather_params(self.theta)}
        for name, vec in sorted(vectors.items()):
            arrays[f"opt.{name}"] = self.lp.gather_params(vec)
        for name in ("U", "Lam"):  # warm-start rows differ per rank (and per data group)
            rows = getattr(self.lp, name)
            parts = world.gather_obj(None if rows is None else be.to_host(rows), 0)
            if world.rank == 0 and all(p is not None for p in parts):
                arrays.update({f"warm.{name}.{r}": p for r, p in enumerate(parts)})
        if run.order is not None:
            arrays["batch_order"] = run.order
        meta = {"config": self.cfg.model_dump(), "ranks": world.size, "history": run.history,
                "optimizer": scalars, "rng": run.rng.bit_generator.state, "pos": run.pos,
                "failures": run.failures, "first": run.first, "elapsed": run.elapsed, "stopped": run.stopped}
        written_on_root(world, lambda: save(self.cfg.checkpoint_dir, len(run.history), arrays, meta))

    def _read_checkpoint(self) -> tuple:
        """(arrays, meta, path, skipped) of the newest readable checkpoint in ``cfg.resume`` (read
        on rank 0, given to every rank), its settings checked against this run's; a checkpoint
        naming a layer import path needs ``--layer`` or ``--trust`` (then ``cfg.layer`` is set)."""
        from ..io import checkpoint

        loaded, err = None, None
        if self.world.rank == 0:
            try:
                loaded = checkpoint.load_for_resume(self.cfg.resume, self.cfg.model_dump(), self.RESUMABLE_CHANGES)
            except UserError as exc:
                err = str(exc)
        loaded, err = self.world.bcast_obj((loaded, err), 0)
        if err is not None:
            raise UserError(err)
        self.cfg = self.cfg.model_copy(update={"layer": loaded[4]})
        return loaded[:4]

    def restore(self, warn) -> "RunState":
        """Load the checkpoint :meth:`_read_checkpoint` found into this trainer (saying, through
        ``warn``, which newer ones it skipped); returns the loop state.

        On the rank count that wrote it the run continues bit for bit (warm-start rows included);
        on another it continues from the parameters and the optimiser state.
        """
        from ..io.checkpoint import check_restorable

        world, be = self.world, self.be
        arrays, meta, path, skipped = self.resumed
        if skipped and world.rank == 0:
            warn(f"resume: {'; '.join(skipped)}; resuming from {path!r} (iteration {len(meta['history'])})")
        same = meta["ranks"] == world.size and meta["config"]["data_parallel"] == self.cfg.data_parallel
        rows = {name: (self.lp.b - self.lp.a + 1, self.model.state_shape) for name in ("U", "Lam")} if same else {}
        rng = check_restorable(arrays, meta, path, self.model.layout().size, self.meta["n_train"],
                               {f"warm.{k}.{world.rank}": v for k, v in rows.items()})
        self.theta[...] = self.lp.scatter_params(arrays["theta"])
        vectors = {k[4:]: self.lp.scatter_params(v) for k, v in arrays.items() if k.startswith("opt.")}
        self.opt.load_state(vectors, meta["optimizer"], self.theta)
        if same:
            for name in ("U", "Lam"):
                rows = arrays.get(f"warm.{name}.{world.rank}")
                setattr(self.lp, name, None if rows is None else be.asarray(rows))
        self.monitor.resume(self.lp, meta["history"])
        self.lp.held_rho = meta["history"][-1].get("rho") if meta["history"] else None  # held since the estimate
        return RunState(rng, arrays.get("batch_order"), meta["pos"], meta["history"], meta["failures"],
                        meta["first"], meta["elapsed"], meta["stopped"])


def _check_memory(cfg: TrainConfig, m, batch: int, groups: int, layer_ranks: int, be) -> None:
    """UserError before allocating when a rank's share of the run would not fit (:func:`check_memory`)."""
    ends = sum(math.prod(s) for s in (*m.opening.param_shapes, *m.head.param_shapes)), m.n_out
    check_memory(cfg, m.state_shape, sum(math.prod(s) for s in m.step.param_shapes), -(-batch // groups),
                 layer_ranks, be, ends, m.held_bytes(-(-cfg.layers // layer_ranks)))


def resolve_method(cfg: TrainConfig, world: Comm, data, step) -> tuple[TrainConfig, dict | None]:
    """``cfg`` and None, or for ``method`` "auto" the planner's choice for ``world``'s ranks and its
    record (:func:`gpubraid.training.plan.resolve_auto`; rank 0 probes a single-rank trainer)."""
    if cfg.method != "auto":
        return cfg, None
    from .plan import resolve_auto

    return resolve_auto(cfg, world, lambda c: Trainer(c, Comm.single(), data=data, step=step))


def written_on_root(world: Comm, write) -> None:
    """Rank 0 calls ``write()``; every rank raises its :class:`~gpubraid.runtime.atomic.WriteError`."""
    err = None
    if world.rank == 0:
        try:
            write()
        except WriteError as exc:
            err = str(exc)
    err = world.bcast_obj(err, 0)
    if err is not None:
        raise WriteError(err)


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
    warned: bool = False                 # the stall warning was given
