"""Run under mpiexec: gpubraid.torch.LayerParallel inside a small PyTorch conv ResNet.

Usage:
    python torch_module_check.py grads METHOD...  gradients of the opening, the layers and the head vs torch
                                                  autograd of the unrolled network (rank 0 prints a JSON list,
                                                  one entry per method)
    python torch_module_check.py save FILE        3 SGD steps, then the model's state dict to FILE and the
                                                  predicted labels to FILE.labels.npy
    python torch_module_check.py load FILE        the state dict of FILE on this rank count; prints JSON with
                                                  the labels' agreement with FILE.labels.npy
"""
import json
import sys

import numpy as np
import torch
from mpi4py import MPI

from gpubraid.torch import LayerParallel

torch.set_default_dtype(torch.float64)
C, H, N, T, CLASSES = 3, 6, 7, 1.5, 4


class Block(torch.nn.Module):
    """f(u) = tanh(conv2(tanh(conv1(u)))): one residual layer on C channels."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(C, C, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(C, C, 3, padding=1)

    def forward(self, u):
        return torch.tanh(self.conv2(torch.tanh(self.conv1(u))))


class Net(torch.nn.Module):
    def __init__(self, method, **options):
        super().__init__()
        torch.manual_seed(5)
        self.lp = LayerParallel(Block, N, T, comm=MPI.COMM_WORLD, method=method, **options)
        self.open = self.lp.on_first(torch.nn.Conv2d(1, C, 3, padding=1))
        self.head = self.lp.on_last(torch.nn.Linear(C * H * H, CLASSES))

    def forward(self, x):
        u = self.lp(torch.tanh(self.open(x)) if self.lp.is_first else None)
        return self.head(u.flatten(1)) if self.lp.is_last else u


def data(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, H, H, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def unrolled(state, x):
    """The same network as plain torch ops on the serial state dict."""
    p = {k: v.detach().clone().requires_grad_() for k, v in state.items()}
    u = torch.tanh(torch.nn.functional.conv2d(x, p["open.weight"], p["open.bias"], padding=1))
    conv = torch.nn.functional.conv2d
    for n in range(N):
        f = torch.tanh(conv(torch.tanh(conv(u, p["lp.conv1_weight"][n], p["lp.conv1_bias"][n], padding=1)),
                            p["lp.conv2_weight"][n], p["lp.conv2_bias"][n], padding=1))
        u = u + (T / N) * f
    return torch.nn.functional.linear(u.flatten(1), p["head.weight"], p["head.bias"]), p


def rel(a, b):
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-300))


def grads(*methods):
    results = [grads_of(m) for m in methods]
    if MPI.COMM_WORLD.rank == 0:
        print(json.dumps(results))


def grads_of(method):
    comm = MPI.COMM_WORLD
    streamed = {"micro_batches": 3} if method == "pipeline" else {}   # sample blocks through the ranks
    model = Net(method, tol=1e-13, max_iter=100, cfactor=2, max_levels=3, stability=0.0, **streamed)
    x, y = data()
    out = model(x)
    loss = torch.nn.functional.cross_entropy(out, y) if model.lp.is_last else out
    loss.backward()
    state = model.state_dict()            # collective: the serial layout on every rank
    mine = {k: p.grad.numpy() for k, p in model.named_parameters() if p.grad is not None}
    parts = comm.gather(mine, root=0)
    if comm.rank != 0:
        return
    got = {}
    for part in parts:                    # rank order: the layer blocks concatenate
        for k, g in part.items():
            got[k] = np.concatenate([got[k], g]) if k.startswith("lp.") and k in got else g
    logits, p = unrolled(state, x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    errs = {k: rel(torch.from_numpy(got[k]), p[k].grad) for k in p}
    fwd = model.lp.last_stats[0]
    return {"ranks": comm.size, "method": method, "errors": errs, "max_error": max(errs.values()),
            "fwd_levels": fwd.levels, "fwd_iterations": fwd.iterations}


def predict(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out.argmax(1).numpy() if model.lp.is_last else None


def save(path):
    comm = MPI.COMM_WORLD
    model = Net("exact", tol=1e-12)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = data(40, seed=1)
    for _ in range(3):
        opt.zero_grad()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y) if model.lp.is_last else out
        loss.backward()
        opt.step()
    state = model.state_dict()
    labels = predict(model, data(30, seed=2)[0])
    if comm.rank == 0:
        torch.save(state, path)
    if model.lp.is_last:
        np.save(path + ".labels.npy", labels)


def load(path):
    comm = MPI.COMM_WORLD
    model = Net("exact")
    model.load_state_dict(torch.load(path))
    labels = predict(model, data(30, seed=2)[0])
    if model.lp.is_last:
        ref = np.load(path + ".labels.npy")
        print(json.dumps({"ranks": comm.size, "same_labels": int((labels == ref).sum()), "n": len(ref),
                          "distinct": len(set(labels.tolist()))}))


if __name__ == "__main__":
    {"grads": grads, "save": save, "load": load}[sys.argv[1]](*sys.argv[2:])
