"""The ``gpubraid`` command line: ``gpubraid train EXAMPLE [options]`` and ``gpubraid info``.

Every :class:`~gpubraid.train.TrainConfig` field is an option of ``train`` (``final_time`` is
``--final-time``) and a key of the ``--config`` TOML file; explicit options override the file, the
file overrides the built-in defaults, and ``None`` stands for the example's own default
(:data:`gpubraid.train.EXAMPLE_DEFAULTS`).

Exit status: 0 on success, 2 for bad input (:class:`~gpubraid.errors.UserError` and argparse
errors: one line ``gpubraid: error: <message>`` on rank 0, no traceback), 130 on Ctrl-C, 1 for any
other failure (every MPI rank is stopped through :func:`gpubraid.parallel.abort_all`, with a
message naming the failing rank).

Start-up is kept light: NumPy is imported to read the option table, mpi4py and the solver only
inside the commands, so ``gpubraid --help`` never initialises MPI.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

from . import __version__
from .errors import UserError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: How long a rank that hit a UserError while others may still be setting up waits for them to
#: agree before it stops the whole job (status 2) instead.
AGREE_TIMEOUT_S = 30.0

# Launcher variables that carry the MPI rank before MPI is initialised (used to print bad-input
# messages on rank 0 only without starting MPI).
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "PALS_RANKID",
              "SLURM_PROCID")


def launcher_rank() -> int:
    """This process's MPI rank as the launcher advertises it (0 when not launched by one)."""
    for var in _RANK_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def report_error(message: str) -> None:
    """Print ``gpubraid: error: <message>`` to stderr (rank 0 of the launch only)."""
    if launcher_rank() == 0:
        print(f"gpubraid: error: {message}", file=sys.stderr, flush=True)


# -- option table ------------------------------------------------------------------------------------
# kind of every TrainConfig field: how a CLI string or a TOML value is checked.
#   int>=N     integer at least N          float>0    finite number > 0
#   float>=0   finite number >= 0          frac       number in [0, 1)
#   str        any string (paths)          bool       true/false
#   choice     one of CHOICES[field]
_KINDS = {
    "example": "choice", "layers": "int>=1", "channels": "int>=1", "final_time": "float>0",
    "activation": "choice", "optimizer": "choice", "lr": "float>0", "momentum": "frac",
    "memory": "int>=1", "batch_size": "int>=0", "iterations": "int>=1", "seed": "int>=0",
    "dtype": "choice", "backend": "choice", "method": "choice", "gamma_tik": "float>=0",
    "gamma_ddt": "float>=0", "init_scale": "float>0", "cfactor": "int>=2", "max_levels": "int>=1",
    "nrelax": "int>=0", "fwd_iters": "int>=0", "bwd_iters": "int>=0", "tol": "float>=0",
    "max_iter": "int>=0", "n_train": "int>=1", "n_val": "int>=1", "data_dir": "str",
    "val_every": "int>=0", "metrics": "str", "progress": "bool",
}

_HELP = {
    "layers": "number of residual layers N",
    "channels": "width C of every residual layer (features, or conv channels)",
    "final_time": "final time T of the ODE; step size h = T/N",
    "activation": "activation function",
    "optimizer": "optimiser; lbfgs is full batch",
    "lr": "learning rate of sgd/adam",
    "momentum": "sgd momentum",
    "memory": "L-BFGS memory (curvature pairs kept)",
    "batch_size": "mini-batch size; 0 = full batch",
    "iterations": "optimisation steps",
    "seed": "seed of data sampling, initialisation and batch order",
    "dtype": "floating-point precision",
    "backend": "array backend; auto = cupy when a GPU is visible (env GPUBRAID_BACKEND overrides)",
    "method": "training method: serial backprop, exact MGRIT solves, or one-shot MGRIT",
    "gamma_tik": "Tikhonov regularisation weight",
    "gamma_ddt": "weight of the time-derivative (smoothness) regulariser",
    "init_scale": "scale of the random initial parameters",
    "cfactor": "MGRIT coarsening factor",
    "max_levels": "MGRIT levels at most",
    "nrelax": "MGRIT CF sweeps after the first F-relaxation (0: F, 1: FCF)",
    "fwd_iters": "oneshot: forward MGRIT iterations per step",
    "bwd_iters": "oneshot: adjoint MGRIT iterations per step",
    "tol": "exact/validation: absolute MGRIT residual tolerance",
    "max_iter": "exact/validation: MGRIT iterations per solve at most",
    "n_train": "training samples (None: all available)",
    "n_val": "validation samples (None: all available)",
    "data_dir": "directory of the data files (None: env GPUBRAID_DATA; mnist: the bundled subset)",
    "val_every": "validation accuracy every this many steps; 0 = only at the end",
    "metrics": "write the metrics JSON to FILE (rank 0; the directory must exist)",
}

_METAVARS = {"data_dir": "DIR", "metrics": "FILE"}


def _choices() -> dict:
    from .activations import ACTIVATIONS
    from .backend import BACKENDS, DTYPES
    from .data import DATASETS
    from .optim import OPTIMIZERS
    from .train import METHODS

    return {"example": tuple(DATASETS), "activation": tuple(ACTIVATIONS), "optimizer": tuple(OPTIMIZERS),
            "method": tuple(METHODS), "backend": ("auto", *BACKENDS), "dtype": tuple(DTYPES)}


def _requirement(kind: str, choices=()) -> str:
    """What ``kind`` allows, in words (for messages)."""
    if kind.startswith("int>="):
        return f"an integer >= {kind[5:]}"
    return {"float>0": "a finite number > 0", "float>=0": "a finite number >= 0",
            "frac": "a number in [0, 1)", "str": "a string", "bool": "true or false",
            "choice": "one of " + ", ".join(choices)}[kind]


def check_value(name: str, kind: str, value, choices=()):
    """``value`` converted for field ``name`` of kind ``kind``; ValueError(requirement) otherwise.

    Strings (from the command line) are parsed; TOML values must already have the right type
    (an integer is accepted where a number is expected).
    """
    need = _requirement(kind, choices)
    bad = ValueError(f"must be {need}; got {value!r}")
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise bad
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if kind == "choice":
        if value not in choices:
            raise bad
        return value
    if isinstance(value, bool):
        raise bad
    if kind.startswith("int>="):
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise bad from None
        if not isinstance(value, int) or value < int(kind[5:]):
            raise bad
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise bad from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad
    value = float(value)
    ok = {"float>0": value > 0, "float>=0": value >= 0, "frac": 0 <= value < 1}[kind]
    if not ok:
        raise bad
    return value


def _arg_type(name: str, kind: str, choices):
    def parse(text: str):
        try:
            return check_value(name, kind, text, choices)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = kind  # argparse names the type in some messages
    return parse


def _default_text(name: str, default, example_defaults: dict) -> str:
    if default is not None:
        return f"default: {default}"
    per = [f"{ex} {d[name]}" for ex, d in example_defaults.items() if d.get(name) is not None]
    if per:
        return "default None = per example: " + ", ".join(per)
    return "default: None"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on rank 0 and exit status 2."""

    def error(self, message: str):
        report_error(f"{message} (see '{self.prog} --help')")
        self.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The ``gpubraid`` parser; options of ``train`` default to SUPPRESS (only explicit ones appear)."""
    from .train import EXAMPLE_DEFAULTS, TrainConfig

    choices = _choices()
    parser = _Parser(prog="gpubraid", description="Layer-parallel ResNet training by MGRIT "
                     "(multigrid reduction in time) on GPUs and MPI clusters.")
    parser.add_argument("--version", action="version", version=f"gpubraid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    train = sub.add_parser(
        "train", help="train a network on one of the examples",
        description="Train a ResNet-ODE on EXAMPLE.  Run under 'mpiexec -n P' to distribute the "
                    "layers over P ranks.  Options override --config; 'None' defaults take the "
                    "example's value.",
        argument_default=argparse.SUPPRESS)
    train.add_argument("example", nargs="?", default=None, metavar="EXAMPLE",
                       type=_arg_type("example", "choice", choices["example"]),
                       help=f"one of {', '.join(choices['example'])} (may instead come from --config)")
    train.add_argument("--config", metavar="FILE", help="TOML file of TrainConfig keys "
                       "(e.g. layers = 16, final_time = 2.0); command-line options override it")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, kind in _KINDS.items():
        if name in ("example", "progress"):
            continue
        opt_choices = choices.get(name, ())
        help_text = _HELP[name]
        if opt_choices:
            help_text += f" ({', '.join(opt_choices)})"
        help_text += f"; {_default_text(name, defaults[name], EXAMPLE_DEFAULTS)}"
        train.add_argument("--" + name.replace("_", "-"), dest=name, type=_arg_type(name, kind, opt_choices),
                           metavar=_METAVARS.get(name, name.upper().replace("_", "-")
                                                 if not opt_choices else "{" + ",".join(opt_choices) + "}"),
                           help=help_text.replace("%", "%%"))
    train.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar (the per-iteration log lines stay)")

    info = sub.add_parser("info", help="versions, backend, GPUs, MPI library and CUDA-awareness",
                          description="Report the software stack and how MPI and the GPUs are set up.")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


# -- configuration -----------------------------------------------------------------------------------
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


def config_from_toml(path: str) -> dict:
    """The TrainConfig values of a TOML file (keys with underscores or dashes), checked."""
    raw = _load_toml(path)
    choices = _choices()
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in _KINDS:
            raise UserError(f"config: unknown key {key!r} in {path!r}; allowed keys: {', '.join(_KINDS)}")
        if name in values:
            raise UserError(f"config: key {name!r} given twice in {path!r}")
        try:
            values[name] = check_value(name, _KINDS[name], value, choices.get(name, ()))
        except ValueError as exc:
            raise UserError(f"config: {key} in {path!r} {exc}") from None
    return values


def train_config(args: argparse.Namespace):
    """The TrainConfig of ``gpubraid train``: defaults < --config file < explicit options."""
    from .train import TrainConfig

    values = config_from_toml(args.config) if getattr(args, "config", None) else {}
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config") and v is not None}
    values.update(given)
    if values.get("example") is None:
        raise UserError("example: give EXAMPLE (peaks, mnist or indianpines) or set 'example' in --config")
    return TrainConfig(**values)


def check_metrics_dir(path: str | None) -> None:
    """UserError unless the directory that will receive the metrics file exists."""
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"metrics: directory {directory!r} does not exist")
    if os.path.isdir(path):
        raise UserError(f"metrics: {path!r} is a directory; give a file name")


# -- train --------------------------------------------------------------------------------------------
def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def iteration_line(entry: dict, method: str) -> str:
    """One readable log line for a history entry of :meth:`Trainer.run`."""
    parts = [f"it {entry['iter'] + 1:5d}", f"J {entry['objective']:.6e}", f"|g| {entry['grad_norm']:.3e}"]
    if "val_accuracy" in entry:
        parts.append(f"val {entry['val_accuracy']:.4f}")
    if method != "serial":
        if "fwd_iters" in entry:
            parts.append(f"fwd {entry['fwd_iters']} it r {_fmt(entry.get('fwd_residual'), '.2e')}")
        if "bwd_iters" in entry:
            parts.append(f"bwd {entry['bwd_iters']} it r {_fmt(entry.get('bwd_residual'), '.2e')}")
    parts.append(f"{entry['time_s']:.2f} s")
    return "  ".join(parts)


class _Progress:
    """Rank 0's progress report: a tqdm bar on stderr plus one log line per iteration on stdout."""

    def __init__(self, total: int, method: str, bar: bool):
        from tqdm import tqdm

        self.tqdm = tqdm
        interactive = sys.stderr.isatty()
        self.interactive = interactive
        # Off a terminal tqdm cannot redraw in place; refresh rarely so logs stay readable.
        self.bar = tqdm(total=total, desc="train", unit="it", file=sys.stderr, disable=not bar,
                        dynamic_ncols=interactive, mininterval=0.1 if interactive else 10.0, leave=False)
        self.method = method

    def write(self, line: str) -> None:
        """A log line on stdout; on a terminal through tqdm so the bar is redrawn below it."""
        if self.interactive:
            self.tqdm.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def __call__(self, entry: dict) -> None:
        self.write(iteration_line(entry, self.method))
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _agree(world, agree_comm, err: UserError | None) -> str | None:
    """After set-up: None when no rank failed, else the first failing rank's message (all ranks).

    A rank that failed waits at most :data:`AGREE_TIMEOUT_S` for the others (which may be stuck in
    a collective it never joined) and then stops the job with status 2.
    """
    import numpy as np
    from mpi4py import MPI

    from .parallel import abort_all

    flag = np.array([0 if err is None else 1], dtype=np.int32)
    out = np.zeros(1, dtype=np.int32)
    req = agree_comm.Iallreduce(flag, out, op=MPI.MAX)
    if err is None:
        req.Wait()
    else:
        deadline = time.monotonic() + AGREE_TIMEOUT_S
        while not req.Test():
            if time.monotonic() > deadline:
                abort_all(world, err, EXIT_USAGE)
            time.sleep(0.01)
    if out[0] == 0:
        return None
    messages = agree_comm.allgather(None if err is None else str(err))
    return next(m for m in messages if m is not None)


def cmd_train(args: argparse.Namespace) -> int:
    """``gpubraid train``: configuration errors before MPI starts, then set-up, run, report."""
    from .train import write_json_atomic

    cfg = train_config(args)
    resolved = cfg.resolved()  # every rank checks the same values: no MPI needed to agree

    from mpi4py import MPI

    from .parallel import Comm, abort_all
    from .train import Trainer, print_summary

    world = MPI.COMM_WORLD
    comm = Comm.world()
    multi = comm.size > 1
    err = None
    if comm.rank == 0:
        try:
            check_metrics_dir(resolved.metrics)
        except UserError as exc:
            err = str(exc)
    err = comm.bcast_obj(err, 0)
    if err is not None:
        raise UserError(err)

    agree_comm = world.Dup() if multi else None
    trainer, setup_error = None, None
    try:
        trainer = Trainer(cfg, comm, log=print if comm.rank == 0 else None)
    except UserError as exc:
        if not multi:
            raise
        setup_error = exc
    if multi:
        message = _agree(world, agree_comm, setup_error)
        agree_comm.Free()
        if message is not None:
            raise UserError(message)

    progress = None
    if comm.rank == 0:
        progress = _Progress(resolved.iterations, resolved.method, resolved.progress)
        trainer.log = progress.write
    try:
        try:
            result = trainer.run(progress=progress)
        finally:
            if progress is not None:
                progress.close()
        if comm.rank == 0:
            print_summary(result)
            if resolved.metrics:
                write_json_atomic(resolved.metrics, result.metrics())
                print(f"  metrics         {resolved.metrics}")
    except UserError as exc:
        if multi:  # raised on some ranks only: the others must not wait for them
            abort_all(world, exc, EXIT_USAGE)
        raise
    return 0


# -- info ---------------------------------------------------------------------------------------------
def _prefix(path: str | None) -> str | None:
    """The installation prefix of a file in PREFIX/bin or PREFIX/lib* (its grandparent)."""
    if not path:
        return None
    return os.path.dirname(os.path.dirname(os.path.realpath(path)))


def mpiexec_warning(mpiexec: str | None, libmpi: str | None) -> str | None:
    """A warning when the first ``mpiexec`` on PATH seems to belong to another MPI than ``libmpi``."""
    if mpiexec is None:
        return "no mpiexec on PATH (pip install mpich, or load your cluster's MPI module)"
    if libmpi is None:
        return None
    a, b = _prefix(mpiexec), _prefix(libmpi)
    if a != b:
        return (f"mpiexec ({mpiexec}, prefix {a}) may belong to a different MPI than the loaded "
                f"libmpi ({libmpi}, prefix {b}); launch with the mpiexec of the MPI mpi4py uses")
    return None


def gather_info() -> dict:
    """The report of ``gpubraid info`` (the per-process entries gathered on every rank)."""
    import platform
    import shutil
    import socket

    import numpy as np
    import mpi4py
    from mpi4py import MPI

    from .backend import _cupy_or_none, resolve_backend
    from .parallel import detect_cuda_aware, mpi_library_path, node_local_rank

    cupy_version = None
    try:
        import cupy

        cupy_version = cupy.__version__
    except Exception:  # not installed, or a broken CUDA installation
        pass
    gpus = []
    cp = _cupy_or_none()
    if cp is not None:
        for i in range(cp.cuda.runtime.getDeviceCount()):
            name = cp.cuda.runtime.getDeviceProperties(i)["name"]
            gpus.append(name.decode() if isinstance(name, bytes) else str(name))
    try:
        backend = resolve_backend().name
    except UserError as exc:
        backend = f"unavailable: {exc}"
    try:
        aware, how = detect_cuda_aware()
    except UserError as exc:
        aware, how = False, str(exc)
    libmpi = mpi_library_path()
    mpiexec = shutil.which("mpiexec")
    world = MPI.COMM_WORLD
    local = node_local_rank()
    device = None
    if cp is not None and gpus:
        device = local % len(gpus)
    me = {"rank": world.Get_rank(), "host": socket.gethostname(), "local_rank": local, "gpu": device}
    processes = world.allgather(me)
    return {
        "gpubraid": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi_library": " ".join(MPI.Get_library_version().strip().splitlines()[0].split()),
        "mpi_library_path": libmpi,
        "cupy": cupy_version,
        "backend": backend,
        "gpus": gpus,
        "cuda_aware": aware,
        "cuda_aware_decided_by": how,
        "ranks": world.Get_size(),
        "node_local_rank": local,
        "processes": processes,
        "mpiexec": mpiexec,
        "mpiexec_warning": mpiexec_warning(mpiexec, libmpi),
    }


def format_info(info: dict) -> str:
    """``gpubraid info``'s human-readable report."""
    rows = [
        ("gpubraid", info["gpubraid"]), ("python", info["python"]), ("numpy", info["numpy"]),
        ("mpi4py", info["mpi4py"]), ("MPI library", info["mpi_library"]),
        ("libmpi", info["mpi_library_path"] or "not found"), ("mpiexec", info["mpiexec"] or "not found"),
        ("cupy", info["cupy"] or "not installed"), ("backend", info["backend"]),
        ("GPUs", ", ".join(f"{i}: {n}" for i, n in enumerate(info["gpus"])) or "none"),
        ("CUDA-aware MPI", f"{'yes' if info['cuda_aware'] else 'no'} "
                           f"(decided by {info['cuda_aware_decided_by']})"),
        ("ranks", info["ranks"]), ("node-local rank", info["node_local_rank"]),
    ]
    lines = [f"{k:<16}{v}" for k, v in rows]
    if info["ranks"] > 1:
        for p in info["processes"]:
            gpu = "-" if p["gpu"] is None else p["gpu"]
            lines.append(f"  rank {p['rank']:<4} host {p['host']}  local rank {p['local_rank']}  GPU {gpu}")
    if info["mpiexec_warning"]:
        lines.append(f"warning: {info['mpiexec_warning']}")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from mpi4py import MPI

    info = gather_info()

    if MPI.COMM_WORLD.Get_rank() == 0:
        print(json.dumps(info, indent=1) if args.json else format_info(info), flush=True)
    return 0


# -- entry point --------------------------------------------------------------------------------------
def _world_or_none():
    """COMM_WORLD when mpi4py is (or can be) loaded, else None."""
    try:
        from mpi4py import MPI

        return MPI.COMM_WORLD
    except Exception:
        return None


def main(argv=None) -> int:
    """Run the ``gpubraid`` command line; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "train":
            return cmd_train(args)
        return cmd_info(args)
    except UserError as exc:
        report_error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        report_error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        from .parallel import abort_all

        abort_all(_world_or_none(), exc, 1)
        return 1
