"""``gpubraid plan``: every way to run a training job on P ranks, with its predicted time, best first.

It takes ``gpubraid train``'s options (and ``--config``), probes the job's step calls on this
machine and backend on one process (:mod:`gpubraid.training.probe`), and prints the candidates of
:func:`gpubraid.training.plan.candidates` on ``--ranks`` P (which may exceed the ranks at hand),
the first of which ``--method auto`` would train with on P ranks.
"""
from __future__ import annotations

import argparse
import json


def add_parser(sub, parse, add_train_options) -> None:
    """The ``plan`` subcommand on ``sub``: the train options plus --ranks, --network and --json."""
    from ..training.plan import NETWORKS

    plan = sub.add_parser(
        "plan", help="predict the time of every data x layer x method split of a job on P ranks",
        description="Probe the job's step costs here (one process, a few seconds) and print every way "
                    "to run it on P ranks (data groups x layer ranks, serial / pipeline / oneshot / exact, "
                    "micro-batches) with its predicted seconds per step and to accuracy, best first.",
        argument_default=argparse.SUPPRESS)
    add_train_options(plan)
    plan.add_argument("--ranks", type=parse("data_parallel"), default=1, metavar="P",
                      help="the ranks to plan for (one core or GPU each; may exceed those at hand); default: 1")
    plan.add_argument("--network", default="shm", metavar="NAME|FILE",
                      help=f"network model between the ranks: {', '.join(NETWORKS)} (shm: MPI over shared "
                           "memory on one host, as measured on the development VM) or a ping-pong JSON file "
                           "of python -m bench.pingpong; default: shm")
    plan.add_argument("--json", metavar="FILE", default=None, help="also write the plan (probe, candidates) as JSON")


def cmd_plan(args: argparse.Namespace, train_config, check_output_path) -> int:
    """``gpubraid plan``: probe on this process, print the table and the choice (``train_config``,
    ``check_output_path``: those of :mod:`gpubraid.cli.main`)."""
    from ..runtime.atomic import write_output
    from ..runtime.comm import Comm
    from ..training.plan import fixed_by, make_plan, network
    from ..training.trainer import Trainer

    ranks, net, out = args.ranks, network(args.network), args.json
    for name in ("ranks", "network", "json"):
        delattr(args, name)
    cfg = train_config(args)
    check_output_path("json", out)
    made = make_plan(cfg, ranks, net, lambda c: Trainer(c, Comm.single()), fixed=fixed_by(cfg))
    c = made.config
    print(f"gpubraid plan: {c['example'] or c['data']}, {c['layers']} layers x {c['channels']} channels, "
          f"{c['optimizer']} {c['iterations']} steps, batch {made.probe.batch}, {c['dtype']}, on {ranks} rank(s)")
    print(made.table())
    print(made.line())
    if out:
        write_output("json", out, json.dumps(made.as_dict(), indent=1, default=str))
    return 0
