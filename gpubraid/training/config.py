"""Every setting of a training run, declared once.

:class:`TrainConfig` is the single schema: each field's type, constraint, default and help text
live in its declaration.  From it come the ``gpubraid train`` options and the README's option
table (rendered by :mod:`gpubraid.cli.options`), the TOML keys of ``--config``
(:func:`from_toml`) and validation with one-line messages (:func:`validate`).  Adding a setting
means adding one field here.

``None`` in an example-dependent field means "the example's default" (:data:`EXAMPLE_DEFAULTS`);
:meth:`TrainConfig.resolved` fills those in and checks the combination.
"""
from __future__ import annotations

import sys
import types
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..data.dataset import DATASETS, TASKS
from ..errors import UserError
from ..network.activations import ACTIVATIONS as ACTIVATION_FUNCTIONS
from ..objective.pipeline import SCHEDULES
from .optim import OPTIMIZERS

INT_MAX = 2**31 - 1          # kernels index with 32-bit integers; no count may exceed it


#: The training methods (:mod:`gpubraid.training.methods` builds them).  Every other list of
#: allowed values comes from the module that implements the choice.
METHODS = ("serial", "exact", "oneshot", "pipeline", "auto")
EXAMPLES = DATASETS
ACTIVATIONS = tuple(ACTIVATION_FUNCTIONS)


Count = Annotated[int, Field(ge=1, le=INT_MAX)]


Factor = Annotated[int, Field(ge=2, le=INT_MAX)]


Sweeps = Annotated[int, Field(ge=0, le=1000)]


def _field(default, help: str, group: str, metavar: str | None = None, **constraints):
    """A schema field: ``help`` and ``group`` feed the CLI and README, ``constraints`` pydantic."""
    extra = {"group": group}
    if metavar:
        extra["metavar"] = metavar
    return Field(default, description=help, json_schema_extra=extra, **constraints)


#: Steps a ρ estimate is held on mini-batches when ``estimate_every`` is not given.
MINIBATCH_ESTIMATE_EVERY = 10


class TrainConfig(BaseModel):
    """The settings of one training run (CLI options, TOML keys and Python keywords alike)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- problem --------------------------------------------------------------------------------
    example: Literal[EXAMPLES] | None = _field(
        None, "built-in data set and network (positional EXAMPLE on the command line)", "problem")
    data: str | None = _field(
        None, "train on your own arrays: a .npz with x_train, y_train and optionally x_val, y_val "
        "(features (n, d) -> dense, images (n, [C,] H, W) -> conv); instead of EXAMPLE", "problem", "FILE",
        min_length=1)
    task: Literal[("auto", *TASKS)] = _field(
        "auto", "with --data: integer labels (classification) or float targets (regression); auto = "
        "from the dtype of y_train", "problem")
    normalize: bool = _field(True, "with --data: standardise the inputs by the training mean and std "
                             "(recorded in model files; --no-normalize: off)", "problem")
    n_train: Count | None = _field(None, "training samples (None: all available)", "problem")
    n_val: Count | None = _field(None, "validation samples (None: all available)", "problem")
    data_dir: str | None = _field(
        None, "directory of the data files (None: env GPUBRAID_DATA; mnist: the bundled subset)",
        "problem", "DIR", min_length=1)
    # -- network --------------------------------------------------------------------------------
    layer: str | None = _field(
        None, "residual layer: dense, conv, or 'module:attr' (a step class called as attr(backend=, "
        "state_shape=), or a torch.nn.Module class for one layer's f); default: dense or conv by the data",
        "network", "LAYER", min_length=1)
    layers: Count | None = _field(None, "number of residual layers N", "network")
    channels: Count | None = _field(None, "width C of every residual layer (features, or conv channels)",
                                    "network")
    final_time: float | None = _field(None, "final time T of the ODE; step size h = T/N", "network",
                                      gt=0, allow_inf_nan=False)
    activation: Literal[ACTIVATIONS] | None = _field(None, "activation function", "network")
    init_scale: float = _field(1.0, "scale of the random initial parameters", "network",
                               gt=0, allow_inf_nan=False)
    gamma_tik: float | None = _field(None, "Tikhonov regularisation weight", "network",
                                     ge=0, allow_inf_nan=False)
    gamma_ddt: float | None = _field(None, "weight of the time-derivative (smoothness) regulariser",
                                     "network", ge=0, allow_inf_nan=False)
    # -- optimisation ---------------------------------------------------------------------------
    optimizer: Literal[OPTIMIZERS] | None = _field(None, "optimiser; lbfgs is full batch", "optimisation")
    lr: float | None = _field(None, "learning rate of sgd/adam", "optimisation", gt=0, allow_inf_nan=False)
    momentum: float = _field(0.9, "sgd momentum, in [0, 1)", "optimisation", ge=0, lt=1)
    memory: int = _field(10, "L-BFGS memory (curvature pairs kept)", "optimisation", ge=1, le=1000)
    batch_size: int | None = _field(None, "mini-batch size; 0 = full batch", "optimisation",
                                    ge=0, le=INT_MAX)
    iterations: Count | None = _field(None, "optimisation steps", "optimisation")
    seed: int = _field(0, "seed of data sampling, initialisation and batch order", "optimisation",
                       ge=0, le=2**63 - 1)
    depth_levels: int = _field(
        0, "multilevel initialisation in depth: first train N/2^k, then N/2^(k-1), ..., N/2 layers "
        "(--depth-iterations steps each), each network started from the previous one's parameters "
        "interpolated in depth, and the N layers from the last; 0: off", "optimisation", ge=0, le=20)
    depth_iterations: Count = _field(20, "optimisation steps of each coarser network of --depth-levels",
                                     "optimisation")
    # -- execution ------------------------------------------------------------------------------
    dtype: Literal["float64", "float32"] = _field("float64", "floating-point precision", "execution")
    backend: Literal["auto", "numpy", "cupy"] = _field(
        "auto", "array backend; auto = cupy when a GPU is visible (env GPUBRAID_BACKEND overrides)",
        "execution")
    data_parallel: int = _field(
        1, "data groups D: the P MPI ranks form D groups of P/D layer ranks, each group taking a share "
        "of every batch (P must be a multiple of D)", "execution", ge=1, le=INT_MAX)
    method: Literal[METHODS] = _field(
        "oneshot", "training method: serial backprop, exact MGRIT solves, one-shot MGRIT, pipeline "
        "(serial's gradient by micro-batches streamed through the layer ranks; serial on several layer "
        "ranks is the same), or auto (the fastest for the run's ranks by gpubraid plan's prediction: "
        "method, data groups, micro-batches and schedule, keeping --data-parallel when not 1, "
        "--micro-batches when given and --schedule when not 1f1b; the choice and why are logged)", "execution")
    micro_batches: Count | None = _field(
        None, "layer-serial training (serial, pipeline, one-level exact/oneshot): micro-batches each batch "
        "(each data group's share) is cut into and streamed through the layer ranks; None: 1 on one layer "
        "rank, 4 per layer rank otherwise, more where the batch's states would not stay in the CPU caches "
        "(above 32 MiB on a rank: micro-batches of at most 8 MiB; at most the batch)", "execution")
    schedule: Literal[SCHEDULES] = _field(
        "1f1b", "pipeline schedule: gpipe (all forwards, then all backwards: states of all micro-batches "
        "held), 1f1b (one forward, one backward: at most P micro-batches held per rank) or chimera (half the "
        "micro-batches streamed the other way through mirrored layer blocks, which fills 1F1B's idle ends "
        "on an even number of ranks: every rank also holds its mirror rank's parameters, the end ranks "
        "the inputs and targets; at most P + 1 micro-batches held per rank)", "execution")
    # -- MGRIT ----------------------------------------------------------------------------------
    cfactor: Union[Factor, list[Factor]] = _field(
        2, "MGRIT coarsening factor, or one per level, comma-separated (the last repeats)", "MGRIT",
        "M[,M...]")
    nrelax: Union[Sweeps, list[Sweeps], None] = _field(
        None, "MGRIT CF sweeps after the first F-relaxation (0: F, 1: FCF), or one per level; None: per "
        "method, exact 0,1 (F on the finest level, FCF below: the paper's), oneshot 0 (F on every level: "
        "as accurate for one iteration at less work)", "MGRIT", "K[,K...]")
    max_levels: int = _field(10, "MGRIT levels at most", "MGRIT", ge=1, le=64)
    min_coarse: int = _field(2, "MGRIT: no level with fewer steps than this", "MGRIT", ge=1, le=INT_MAX)
    stability: float = _field(
        1.0, "automatic levels: coarsen only while the coarse step H times the spectral scale rho of the "
        "step Jacobian (estimated from the current parameters, see --estimate-every) is <= this; 0: off", "MGRIT",
        ge=0, allow_inf_nan=False)
    estimate_every: int | None = _field(
        None, "automatic levels: estimate rho at the first evaluation of every K-th step and take the "
        "levels from it until the next (1: at every evaluation, line-search trials included); None: 1 with "
        f"the full batch, {MINIBATCH_ESTIMATE_EVERY} on mini-batches (where the estimate reads a quarter of "
        "an 8-sample batch and costs 10-20 % of a one-shot evaluation)", "MGRIT", "K", ge=1, le=INT_MAX)
    conv_bound: float = _field(
        0.1, "oneshot: also only while one iteration's error reduction T*rho^2*H/2 is <= this (exact "
        "ignores it); 0: off", "MGRIT", ge=0, allow_inf_nan=False)
    nested: bool = _field(True, "solves without a warm start begin from nested iteration (coarsest solve "
                          "interpolated up) instead of u_0 everywhere (--no-nested)", "MGRIT")
    coarse_params: Literal["inject", "average"] = _field(
        "inject", "MGRIT coarse steps use the parameters of the first layer they span (inject) or the "
        "step-size-weighted mean over the layers they span (average)", "MGRIT")
    spatial_levels: int = _field(
        0, "MGRIT levels 1..K also halve the conv step's feature maps (2x2 mean down, copied up), so their "
        "steps cost a quarter per halving (conv steps only); 0: every level keeps the full maps", "MGRIT", "K",
        ge=0, le=16)
    minibatch_warm: bool = _field(False, "oneshot with mini-batches: warm-start from the previous batch's "
                                  "solves (measured worse than the nested guess)", "MGRIT")
    adaptive: float = _field(0.0, "oneshot: stop a solve once its residual is <= this times the last "
                             "gradient norm (fwd/bwd iterations stay the caps); 0: fixed counts", "MGRIT",
                             ge=0, allow_inf_nan=False)
    fwd_iters: int = _field(1, "oneshot: forward MGRIT iterations per step", "MGRIT", ge=0, le=1000)
    bwd_iters: int = _field(1, "oneshot: adjoint MGRIT iterations per step", "MGRIT", ge=0, le=1000)
    levels_for_ranks: bool = _field(
        True, "oneshot: at most the levels that pay on the run's layer ranks, 2 up to 2 ranks, 1 + log2(P) "
        "beyond (fewer levels: less work and gradient error; more pay only by shortening the sequential "
        "coarsest solve); --no-levels-for-ranks: the solver's choice alone, the same on every rank count",
        "MGRIT")
    monitor_every: int = _field(
        10, "oneshot: every this many steps (up to 8x as many apart while the error stays within --monitor-tol/4; "
        "also at 1, 2, 4, 8 before the first, after a failed line search and after each raise of the cap) compare the "
        "one-shot gradient with serial's at the same parameters (one layer-serial evaluation) and cap the levels when "
        "its relative error exceeds --monitor-tol; 0: off", "MGRIT", ge=0, le=INT_MAX)
    monitor_tol: float = _field(0.1, "oneshot: the largest relative gradient error the monitor accepts",
                                "MGRIT", gt=0, allow_inf_nan=False)
    tol: float = _field(1e-9, "exact: absolute MGRIT residual tolerance of every solve", "MGRIT",
                        ge=0, allow_inf_nan=False)
    max_iter: int = _field(50, "exact: MGRIT iterations per solve at most", "MGRIT",
                           ge=0, le=100000)
    # -- output ---------------------------------------------------------------------------------
    val_every: int = _field(10, "validation accuracy every this many steps; 0 = only at the end",
                            "output", ge=0, le=INT_MAX)
    metrics: str | None = _field(None, "write the metrics JSON to FILE (rank 0; the directory must exist)",
                                 "output", "FILE", min_length=1)
    trace: str | None = _field(
        None, "record every rank's compute spans (thread CPU time) and messages of the training loop to FILE "
        "(JSON, rank 0 writes; the directory must exist); python -m bench.replay FILE predicts the wall time "
        "with one core or GPU per rank", "output", "FILE", min_length=1)
    save: str | None = _field(None, "write the trained model to FILE (safetensors: parameters, network, "
                              "input preprocessing; for gpubraid predict / gpubraid.load)", "output", "FILE",
                              min_length=1)
    init: str | None = _field(None, "start from the parameters of a saved model FILE (same network)", "output",
                              "FILE", min_length=1)
    checkpoint_dir: str | None = _field(
        None, "write checkpoints into DIR (atomic, the last two kept; also on SIGINT/SIGTERM and at the end)",
        "output", "DIR", min_length=1)
    checkpoint_every: int = _field(0, "checkpoint every this many steps (with --checkpoint-dir); 0 = only "
                                   "on interrupts and at the end", "output", ge=0, le=INT_MAX)
    resume: str | None = _field(None, "continue from the newest checkpoint in DIR (same settings; "
                                "--iterations may grow)", "output", "DIR", min_length=1)
    progress: bool = _field(True, "progress bar on stderr (--no-progress: off; log lines stay)", "output")
    trust: bool = _field(False, "import the step ('module:attr') that an --init model file or a --resume "
                         "checkpoint names, when --layer does not give it (importing runs code: only for "
                         "files you trust)", "output")

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise UserError(_one_line(exc, "")) from None

    def __setattr__(self, name, value):
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise UserError(_one_line(exc, "")) from None

    @field_validator("cfactor", "nrelax", mode="before")
    @classmethod
    def _per_level(cls, v):
        """``"4,2"`` (command line) -> [4, 2]; one number stays one number."""
        if isinstance(v, str):
            parts = [p.strip() for p in v.split(",")]
            if not all(p.lstrip("-").isdigit() for p in parts):
                raise ValueError("not a comma-separated list of integers")
            v = [int(p) for p in parts]
            return v[0] if len(v) == 1 else v
        if isinstance(v, list) and not v:
            raise ValueError("empty list")
        return v

    def resolved(self, kind: str | None = None) -> "TrainConfig":
        """A copy with the defaults of the example (or, for --data, of the data's network ``kind``,
        "dense" until the data are read) filled in; UserError when something is missing."""
        if (self.example is None) == (self.data is None):
            raise UserError("example: give EXAMPLE (" + ", ".join(EXAMPLES) + ") or --data FILE, not both "
                            "(or set 'example' or 'data' in --config)")
        values = self.model_dump()
        defaults = EXAMPLE_DEFAULTS[self.example] if self.example else DATA_DEFAULTS[kind or "dense"]
        for key, value in defaults.items():
            if values[key] is None:
                values[key] = value
        cfg = validate(values)
        if cfg.optimizer == "lbfgs" and cfg.batch_size:
            raise UserError("optimizer lbfgs is full-batch: use --batch-size 0, or sgd/adam for mini-batches")
        if cfg.optimizer != "lbfgs" and cfg.lr is None:
            raise UserError(f"optimizer {cfg.optimizer} needs --lr > 0")
        return cfg

    def optimizer_settings(self) -> dict:
        """Keyword arguments of :func:`gpubraid.training.optim.make_optimizer` for this optimiser."""
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


# Defaults for your own data (--data), by the network the data call for: small features train like
# peaks (full-batch L-BFGS), images like MNIST (mini-batch Adam).
DATA_DEFAULTS = {"dense": EXAMPLE_DEFAULTS["peaks"], "conv": EXAMPLE_DEFAULTS["mnist"]}


FIELDS = TrainConfig.model_fields


# -- what a field allows, in words -------------------------------------------------------------------
def _constraints(info) -> dict:
    out = {}
    flat = [x for m in info.metadata for x in (getattr(m, "metadata", None) or [m])]
    for m in flat:
        for key in ("ge", "gt", "le", "lt", "min_length"):
            if getattr(m, key, None) is not None:
                out[key] = getattr(m, key)
    return out


def _words(tp, info=None) -> str:
    """``tp`` (an annotation, with the constraints of ``info``) in words, for messages and help."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        inner = type("I", (), {"metadata": args[1:]})
        return _words(args[0], inner)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (Union, types.UnionType):
        return " or ".join(_words(a, info) for a in args if a is not type(None))
    if origin is list:
        return "a comma-separated list of such integers"
    c = _constraints(info) if info is not None else {}
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a non-empty string"
    name = "an integer" if tp is int else "a finite number"
    lo = f">= {c['ge']}" if "ge" in c else f"> {c['gt']}" if "gt" in c else None
    hi = f"<= {c['le']}" if "le" in c else f"< {c['lt']}" if "lt" in c else None
    bounds = " and ".join(b for b in (lo, hi) if b)
    return f"{name} {bounds}".strip()


def requirement(name: str) -> str:
    """What field ``name`` allows, in words (e.g. 'an integer >= 1 and <= 2147483647')."""
    info = FIELDS[name]
    return _words(info.annotation, info)


def validate(values: dict, *, typed: bool = False, source: str = "") -> TrainConfig:
    """A :class:`TrainConfig` from ``values``, or one :class:`UserError` line naming the setting.

    ``typed`` (TOML files): values must already have their type (an integer is fine for a
    number, not true or "5"); otherwise (command line) strings are converted.  ``source``
    prefixes the message.
    """
    for name, v in values.items() if typed else ():
        textual = requirement(name).startswith(("a non-empty string", "one of")) if name in FIELDS else True
        if isinstance(v, bool) != (name in SWITCHES_OFF + SWITCHES_ON) or (isinstance(v, str) and not textual):
            where = f"{source}: " if source else ""
            raise UserError(f"{where}{name} must be {requirement(name)}; got {v!r}")
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise UserError(_one_line(exc, source)) from None


def _one_line(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    where = f"{source}: " if source else ""
    if not err["loc"]:  # a combination of settings
        return where + str(err["msg"]).removeprefix("Value error, ")
    name = str(err["loc"][0])
    if err["type"] == "extra_forbidden":
        return (f"{where}unknown setting {name!r}; allowed: {', '.join(FIELDS)}")
    return f"{where}{name} must be {requirement(name)}; got {err.get('input')!r}"


# -- TOML --------------------------------------------------------------------------------------------
def _load_toml(path: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config: file {path!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"config: {path!r} is a directory, not a TOML file") from None
    except OSError as exc:
        raise UserError(f"config: cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config: {path!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"config: {path!r} is not UTF-8 text") from None


def from_toml(path: str) -> dict:
    """The settings of a TOML file (keys with underscores or dashes), each checked."""
    values = {}
    for key, value in _load_toml(path).items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise UserError(f"config: unknown key {key!r} in {path!r}; allowed keys: {', '.join(FIELDS)}")
        if name in values:
            raise UserError(f"config: key {name!r} given twice in {path!r}")
        values[name] = value
    validate(values, typed=True, source=f"config {path!r}")
    return values


#: The boolean settings that default to true: their option (--no-NAME) turns them off; the others
#: (default false) are switched on by --NAME.
SWITCHES_OFF = tuple(n for n, f in FIELDS.items() if f.annotation is bool and f.default)
SWITCHES_ON = tuple(n for n, f in FIELDS.items() if f.annotation is bool and not f.default)
