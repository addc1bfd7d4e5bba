"""gpubraid.torch.LayerParallel in a plain PyTorch training script against plain PyTorch.

The README's MNIST conv ResNet ("In your PyTorch script"): opening conv 1 -> C channels, N residual
layers u + h relu(conv(u)), linear head; ``torch.optim.SGD`` with momentum on mini-batches from a
``DataLoader`` over the bundled MNIST subset (4000 training, 1000 validation digits).  Three runs from
the same initial parameters and the same batch order:

    plain    the unrolled network as ordinary torch modules (one process)
    lp-1     LayerParallel, one rank
    lp-2     LayerParallel, two ranks (mpiexec -n 2)

Each run reports the validation accuracy after ``--steps`` steps and the seconds per step (median
over the steps after the first).  The runs are launched in interleaved rounds (``--rounds``);
the JSON keeps every round and the medians.

    python -m bench.torch_module [--steps 200] [--method oneshot] [--rounds 1] [--quick]
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench import common
from bench.common import REPO, document, parser, result_path, write_json

C, LAYERS, T, BATCH, LR = 4, 8, 2.0, 50, 0.01


def build(comm, method, **options):
    """The README's network (LayerParallel with the opening on the first rank, the head on the last)."""
    import torch
    import torch.nn.functional as F

    from gpubraid.torch import LayerParallel

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(C, C, 3, padding=1)

        def forward(self, u):
            return F.relu(self.conv(u))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lp = LayerParallel(Block, LAYERS, T, comm=comm, method=method, **options)
            self.open = self.lp.on_first(torch.nn.Conv2d(1, C, 3, padding=1))
            self.head = self.lp.on_last(torch.nn.Linear(C * 28 * 28, 10))

        def forward(self, x):
            u = self.lp(F.relu(self.open(x)) if self.lp.is_first else None)
            return self.head(u.flatten(1)) if self.lp.is_last else u

    return Net()


def plain_net(state):
    """The same network unrolled as ordinary torch modules, from a (serial) state dict."""
    import torch
    import torch.nn.functional as F

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.open = torch.nn.Conv2d(1, C, 3, padding=1)
            self.blocks = torch.nn.ModuleList(torch.nn.Conv2d(C, C, 3, padding=1) for _ in range(LAYERS))
            self.head = torch.nn.Linear(C * 28 * 28, 10)

        def forward(self, x):
            u = F.relu(self.open(x))
            for conv in self.blocks:
                u = u + (T / LAYERS) * F.relu(conv(u))
            return self.head(u.flatten(1))

    net = Plain()
    with torch.no_grad():
        for name in ("open.weight", "open.bias", "head.weight", "head.bias"):
            net.get_parameter(name).copy_(state[name])
        for n, conv in enumerate(net.blocks):
            conv.weight.copy_(state["lp.conv_weight"][n])
            conv.bias.copy_(state["lp.conv_bias"][n])
    return net


def worker(kind: str, method: str, steps: int, n_val: int) -> dict:
    import torch
    import torch.nn.functional as F

    from gpubraid.data.examples import load_dataset

    torch.set_num_threads(1)
    comm = None
    if kind == "lp":
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    ds = load_dataset("mnist")
    train = torch.utils.data.TensorDataset(torch.from_numpy(ds.x_train).float(), torch.from_numpy(ds.y_train))
    loader = torch.utils.data.DataLoader(train, batch_size=BATCH, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    x_val, y_val = torch.from_numpy(ds.x_val[:n_val]).float(), torch.from_numpy(ds.y_val[:n_val])
    model = build(comm, method)
    if kind == "plain":
        model = plain_net(model.state_dict())
    last = kind == "plain" or model.lp.is_last
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    times, losses, step = [], [], 0
    while step < steps:
        for x, y in loader:
            t0 = time.perf_counter()
            opt.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y) if last else out
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
            step += 1
            if step == steps:
                break
    model.eval()
    with torch.no_grad():
        out = model(x_val)
    acc = float((out.argmax(1) == y_val).float().mean()) if last else None
    return {"kind": kind, "ranks": 1 if comm is None else comm.Get_size(), "method": method if kind == "lp" else None,
            "val_accuracy": acc, "s_per_step": statistics.median(times[1:]), "final_loss": losses[-1],
            "last": last}


def launch(kind: str, ranks: int, args) -> dict:
    cmd = [sys.executable, "-m", "bench.torch_module", "--worker", kind, "--method", args.method, "--steps", str(args.steps),
           "--n-val", str(args.n_val)]
    if kind == "lp":
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return next(r for r in rows if r["last"])


def plot(json_path, png_path=None):
    """Validation accuracy and seconds per step of the three runs (medians over rounds)."""
    import matplotlib.pyplot as plt

    doc = common.load_json(json_path)
    s = doc["summary"]
    kinds = list(s)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    axes[0].bar(kinds, [s[k]["val_accuracy"] for k in kinds], color="tab:green")
    axes[0].set_ylim(min(s[k]["val_accuracy"] for k in kinds) - 0.05, 1.0)
    axes[0].set_ylabel("validation accuracy")
    axes[1].bar(kinds, [s[k]["s_per_step"] for k in kinds], color="tab:blue")
    axes[1].set_ylabel("s per SGD step (median)")
    c = doc["config"]
    fig.suptitle(f"MNIST subset, {c['layers']} layers, {c['steps']} SGD steps, method {c['method']}", fontsize=9)
    fig.tight_layout()
    return common.save_figure(fig, json_path, png_path)


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--method", default="oneshot")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--worker", choices=["plain", "lp"], default=None)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.method, args.steps, args.n_val)), flush=True)
        return
    if args.quick:
        args.steps, args.n_val, args.rounds = 3, 100, 1
    runs = {"plain": [], "lp-1": [], "lp-2": []}
    for _ in range(args.rounds):
        runs["plain"].append(launch("plain", 1, args))
        runs["lp-1"].append(launch("lp", 1, args))
        runs["lp-2"].append(launch("lp", 2, args))
    summary = {k: {"val_accuracy": statistics.median(r["val_accuracy"] for r in v),
                   "s_per_step": statistics.median(r["s_per_step"] for r in v)} for k, v in runs.items()}
    for k in ("lp-1", "lp-2"):
        summary[k]["val_accuracy_minus_plain"] = summary[k]["val_accuracy"] - summary["plain"]["val_accuracy"]
        summary[k]["time_ratio_to_plain"] = summary[k]["s_per_step"] / summary["plain"]["s_per_step"]
    config = {"channels": C, "layers": LAYERS, "final_time": T, "batch": BATCH, "lr": LR, "momentum": 0.9,
              "steps": args.steps, "method": args.method, "rounds": args.rounds, "n_val": args.n_val,
              "dtype": "float32", "torch_threads": 1}
    path = write_json(result_path("torch_module", args.out), document("torch_module", config, runs, summary=summary))
    print(json.dumps(summary, indent=1))
    print(path)
    if not args.no_plot:
        print(plot(path))


if __name__ == "__main__":
    main()
