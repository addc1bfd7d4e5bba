"""The ``gpubraid`` command line: ``train``, ``plan``, ``predict`` and ``info``.

The ``train`` options are generated from :class:`gpubraid.training.config.TrainConfig` (one option per
setting; ``final_time`` is ``--final-time``); ``--config FILE`` reads the same settings from TOML.
Precedence: explicit options > the file > the built-in defaults; ``None`` stands for the example's
own default.

Exit status (:data:`EXIT_STATUSES`): 0 success; 2 bad input (one line ``gpubraid: error:
<message>`` on rank 0, no traceback, every rank stops); 3 training diverged; 4 an output (a
checkpoint, the model or the metrics) could not be written (one line; what was written before is
left intact, and a finished run's summary is still printed); 130 / 143 after SIGINT / SIGTERM (one
line, every rank, within seconds, whenever the signal arrives); 1 any other failure (every MPI rank
is stopped through :func:`gpubraid.runtime.abort.abort_all`, with one line naming the failing rank).

Start-up stays light: the signal handlers are installed before the settings schema, mpi4py or
the solver are imported, and ``gpubraid --help`` imports neither mpi4py nor the solver.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from .. import __version__
from ..errors import Diverged, UserError
from ..runtime.atomic import WriteError
from ..runtime.interrupts import Interrupts, launcher_rank
from ..training.monitor import describe as describe_check

EXIT_USAGE = 2


EXIT_DIVERGED = 3


EXIT_WRITE = 4


EXIT_PIPE = 141


#: Every exit status of the command line and what it means (the README's "Exit status").
EXIT_STATUSES = {0: "success", 1: "an unexpected failure (one line naming the failing rank, after a traceback)",
                 EXIT_USAGE: "bad input: a setting, file or path (one line naming it)",
                 EXIT_DIVERGED: "training diverged (one line naming the cause)",
                 EXIT_WRITE: "an output (a checkpoint, the model or the metrics) could not be written "
                             "(no space, quota, permissions); what was written before is kept and named",
                 130: "interrupted by SIGINT (Ctrl-C)", EXIT_PIPE: "standard output was closed by its reader "
                 "(e.g. piped into head); nothing printed", 143: "interrupted by SIGTERM"}


def say(message: str, kind: str = "error") -> None:
    """Print ``gpubraid: <kind>: <message>`` to stderr, on rank 0 of the launch only."""
    if launcher_rank() == 0:
        print(f"gpubraid: {kind}: {message}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on rank 0 and exit status 2."""

    def error(self, message: str):
        say(f"{message} (see '{self.prog} --help')")
        self.exit(EXIT_USAGE)


def _parse(name: str):

    def parse(text: str):
        from .options import parse_value

        try:
            return parse_value(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``gpubraid`` parser; ``train`` options default to SUPPRESS (only explicit ones appear)."""
    from ..training import config
    from . import options

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
    _train_options(train, config, options)
    predict = sub.add_parser("predict", help="apply a saved model to inputs in a .npz file",
                             description="Apply a model written by 'gpubraid train --save' to inputs.")
    predict.add_argument("model", metavar="MODEL", help="model file (safetensors) from --save")
    predict.add_argument("--data", metavar="FILE", required=True, help="a .npz holding the inputs")
    predict.add_argument("--array", metavar="NAME", help="which array holds the inputs (default: x, "
                         "else x_val, else x_train)")
    predict.add_argument("--out", metavar="FILE", required=True, help="write labels and proba "
                         "(classification) or values (regression) to this .npz")
    predict.add_argument("--layer", metavar="MODULE:ATTR", help="the step of a model trained with "
                         "'--layer MODULE:ATTR' (model files name import paths but are never made to import them)")
    predict.add_argument("--trust", action="store_true", help="import the step the model file names "
                         "(only for files you trust: importing runs code)")
    from .plan import add_parser as add_plan

    add_plan(sub, _parse, lambda p: _train_options(p, config, options))
    info = sub.add_parser("info", help="versions, backend, GPUs, MPI library and CUDA-awareness",
                          description="Report the software stack and how MPI and the GPUs are set up.")
    info.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _train_options(parser, config, options) -> None:
    """EXAMPLE, --config and one option per setting (``train`` and ``plan``)."""
    parser.add_argument("example", nargs="?", default=None, metavar="EXAMPLE", type=_parse("example"),
                        help=f"one of {', '.join(config.EXAMPLES)} (may instead come from --config)")
    parser.add_argument("--config", metavar="FILE", help="TOML file of these settings (keys as the "
                        "options, '_' or '-'); command-line options override it")
    options.add_options(parser, _parse)


def train_config(args: argparse.Namespace):
    """The resolved settings of ``gpubraid train`` (a :class:`~gpubraid.training.config.TrainConfig`):
    defaults < --config file < explicit options."""
    from ..training import config

    values = config.from_toml(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k not in ("command", "config") and v is not None})
    return config.validate(values).resolved()


def _probe(name: str, directory: str) -> None:
    """UserError unless a file can be created in ``directory`` (tried: permissions, read-only
    file systems, root's exemptions and ACLs are all what the file system says)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gpubraid-probe-")
    except OSError as exc:
        raise UserError(f"{name}: cannot write in directory {directory!r}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_path(name: str, path: str | None) -> None:
    """UserError unless ``path`` names a file that can be written: not ending in a separator, not
    a directory, its directory existing and writable."""
    if path is None:
        return
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise UserError(f"{name}: {path!r} ends in a path separator; give a file name")
    if os.path.isdir(path):
        raise UserError(f"{name}: {path!r} is a directory; give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise UserError(f"{name}: directory {directory!r} {what}")
    _probe(name, directory)


def check_directory(name: str, path: str | None) -> None:
    """UserError unless ``path`` is (or, its parent existing, is made) a writable directory."""
    if path is None:
        return
    if not os.path.isdir(path):
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.exists(path) or not os.path.isdir(parent):
            raise UserError(f"{name}: {path!r} is not a directory and cannot be created here")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{name}: cannot create {path!r}: {exc.strerror}") from None
    _probe(name, path)


def check_outputs(cfg) -> None:
    """Every output of a run checked (and the checkpoint directory made) before any work."""
    for name in ("metrics", "save", "trace"):
        check_output_path(name, getattr(cfg, name))
    check_directory("checkpoint_dir", cfg.checkpoint_dir)
    if cfg.trace:
        from ..runtime.trace import host_cores

        host_cores()  # GPUBRAID_TRACE_CORES, when set, is a core count


# -- progress ---------------------------------------------------------------------------------------
def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def iteration_line(entry: dict, method: str) -> str:
    """One readable log line for a history entry of :meth:`Trainer.run`."""
    parts = [f"it {entry['iter'] + 1:5d}", f"J {entry['objective']:.6e}", f"|g| {entry['grad_norm']:.3e}"]
    if "layers" in entry:  # a coarser network of --depth-levels
        parts.insert(0, f"[{entry['layers']} layers]")
    if "val_accuracy" in entry:
        parts.append(f"val {entry['val_accuracy']:.4f}")
    if entry.get("levels") == 1 and method in ("exact", "oneshot"):  # the level choice kept no coarse level
        parts.append("1 level: layer-serial sweep")
    elif method in ("exact", "oneshot"):
        if "levels" in entry:
            parts.append(f"{entry['levels']} levels")
        for d in ("fwd", "bwd"):
            if f"{d}_iters" in entry:
                parts.append(f"{d} {entry[f'{d}_iters']} it r {_fmt(entry.get(f'{d}_residual'), '.2e')}")
    if entry.get("micro_batches", 1) > 1:   # a pipelined evaluation that cut the batch
        parts.append(f"M {entry['micro_batches']}")
    if "monitor" in entry:
        parts.append(describe_check(entry["monitor"]))
    parts.append(f"{entry['time_s']:.2f} s")
    return "  ".join(parts)


class Progress:
    """Rank 0's progress report: a tqdm bar on stderr plus one log line per iteration on stdout."""

    def __init__(self, total: int, method: str, bar: bool):
        import tqdm

        tqdm.tqdm.monitor_interval = 0  # no monitor thread: nothing to trace back on interrupts
        self.tqdm = tqdm.tqdm
        self.interactive = sys.stderr.isatty()
        # Off a terminal tqdm cannot redraw in place; refresh rarely so logs stay readable.
        self.bar = self.tqdm(total=total, desc="train", unit="it", file=sys.stderr, disable=not bar,
                             dynamic_ncols=self.interactive, mininterval=0.1 if self.interactive else 10.0,
                             leave=False)
        self.method = method

    def write(self, line: str) -> None:
        """A log line on stdout; on a terminal through tqdm so the bar is redrawn below it."""
        if self.interactive:
            self.tqdm.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def __call__(self, entry: dict) -> None:
        self.write(iteration_line(entry, self.method))
        if "layers" not in entry:  # the bar counts the N-layer run's steps
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


# -- commands ---------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace, interrupts: Interrupts) -> int:
    """``gpubraid train``: settings checked before MPI starts, outputs on the rank that writes
    them (rank 0), then set-up, run, report."""
    cfg = train_config(args)  # every rank checks the same values: no MPI needed to agree

    from ..runtime.abort import abort_all, agree
    from ..runtime.comm import Comm
    from ..runtime.interrupts import Interrupted
    from ..training.report import print_summary, write_metrics
    from ..training.trainer import Trainer

    comm = Comm.world()
    err = None
    if comm.rank == 0:
        try:
            check_outputs(cfg)
        except UserError as exc:
            err = exc
    message = agree(comm, err, code=EXIT_USAGE)
    if message is not None:
        raise UserError(message)
    trainer, setup_error = None, None
    try:
        trainer = Trainer(cfg, comm)
    except UserError as exc:
        setup_error = exc
    message = agree(comm, setup_error, code=EXIT_USAGE)
    if message is not None:
        raise UserError(message)

    progress = Progress(cfg.iterations, trainer.cfg.method, cfg.progress) if comm.rank == 0 else None
    if progress is not None and trainer.plan is not None:
        progress.write(trainer.plan["line"])
    unwritten = None  # the one line of an output that could not be written
    try:
        trainer.run(progress=progress, interrupts=interrupts,
                    warn=(lambda line: say(line, "warning")) if comm.rank == 0 else (lambda line: None))
    except Interrupted as exc:
        interrupts.report(exc.signum)
        comm.barrier()  # no rank ends before rank 0 has printed the line
        return exc.status
    except WriteError as exc:  # a checkpoint or the model, raised on every rank
        unwritten = str(exc)
    except UserError as exc:
        if comm.size > 1:  # raised on some ranks only: the others must not wait for them
            abort_all(comm, exc, EXIT_USAGE)
        raise
    finally:
        if progress is not None:
            progress.close()
    if comm.rank == 0 and trainer.result is not None:  # finished, even if the model was not saved
        print_summary(trainer.result, saved=unwritten is None)
        if cfg.metrics:
            try:
                write_metrics(cfg.metrics, trainer.result)
                print(f"  metrics         {cfg.metrics}")
            except WriteError as exc:
                unwritten = unwritten or str(exc)
    if unwritten is not None:
        say(unwritten)
        comm.barrier()
        return EXIT_WRITE
    comm.barrier()
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``gpubraid predict``: one process applies the model to the inputs of a .npz file."""
    from ..io.modelfile import predict_file
    from ..network.imports import _import

    check_output_path("out", args.out)
    step = _import(args.layer, "layer") if args.layer else None  # named by the user: imported
    n, name = predict_file(args.model, args.data, args.array, args.out, step=step, trust=args.trust)
    print(f"gpubraid: {n} predictions of {name} written to {args.out}")
    return 0


def main(argv=None) -> int:
    """Run the ``gpubraid`` command line; returns the exit status (:data:`EXIT_STATUSES`)."""
    with Interrupts(lambda line: say(line, "stopped")) as interrupts:
        return _main(argv, interrupts)


def _main(argv, interrupts: Interrupts) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "train":
            return cmd_train(args, interrupts)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "plan":
            from .plan import cmd_plan

            return cmd_plan(args, train_config, check_output_path)
        from .info import print_info

        print_info(args.json)
        return 0
    except UserError as exc:
        say(str(exc))
        return EXIT_USAGE
    except Diverged as exc:
        say(str(exc), "diverged")
        return EXIT_DIVERGED
    except WriteError as exc:  # gpubraid predict's output
        say(str(exc))
        return EXIT_WRITE
    except BrokenPipeError:  # stdout's reader went away (``gpubraid info | head -1``): end quietly
        return _reader_gone()
    except Exception as exc:
        from ..runtime.abort import abort_all

        abort_all(_world_or_none(), exc, 1)
        return 1


def _reader_gone() -> int:
    """Status 141 (as a SIGPIPE would end the process) without a word; every rank stops."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush goes nowhere
    world = _world_or_none()
    if world is not None and world.Get_size() > 1:
        world.Abort(EXIT_PIPE)
    return EXIT_PIPE


def _world_or_none():
    """COMM_WORLD when mpi4py is loaded, else None (for reporting a failure)."""
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi.COMM_WORLD if mpi is not None else None
