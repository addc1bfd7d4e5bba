"""The host kernels of the working tree against those of a git revision, side by side.

    python -m bench.kernel_revisions [--against REV] [--rounds K] [--no-train] [--quick] [--out DIR] [--no-plot]

Kernels: REV's ``kernels/`` sources are compiled with this tree's compiler and flags
(:data:`gpubraid.runtime.host_build.FLAGS`) into a library of their own.  Every case (width C, dtype,
activation; B samples through n layers) runs one forward sweep (σ'(z) kept) and one backward sweep
(λ carried down in place, the layers' gradients added) with each library in turn, K rounds; ns per
layer and sample, medians; and whether the two give the same bits (states, σ', λ_0, gradients).

Training: ``gpubraid train`` of each workload alternately on REV's code (a temporary git worktree)
and on this tree's, K rounds; seconds per evaluation (the median over a run's steps after the
first two), and whether the two runs' objectives and gradient norms agree bit for bit.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import common  # first: sets BLAS threads before NumPy loads

NAME = "kernel_revisions"

#: (label, MPI ranks, train arguments, iterations) of the training comparison.
WORKLOADS = (
    ("peaks-64 serial", 1, ["peaks", "--layers", "64", "--method", "serial"], 60),
    ("peaks-64 pipeline 1x2 M=8", 2, ["peaks", "--layers", "64", "--method", "pipeline", "--micro-batches", "8"], 60),
    ("paper-256 serial", 1, ["peaks", "--layers", "256", "--final-time", "1", "--activation", "smoothrelu",
                             "--method", "serial"], 40),
    ("paper-256 oneshot", 1, ["peaks", "--layers", "256", "--final-time", "1", "--activation", "smoothrelu",
                              "--method", "oneshot"], 20),
    ("adam-dense serial", 1, ["peaks", "--layers", "64", "--channels", "32", "--optimizer", "adam", "--lr", "1e-3",
                              "--batch-size", "50", "--dtype", "float32", "--method", "serial"], 300),
)
QUICK_WORKLOADS = (("peaks-16 serial", 1, ["peaks", "--layers", "16", "--n-train", "500", "--method", "serial"], 10),)


def cases(quick: bool) -> list[tuple[int, str, str]]:
    """(C, dtype, activation) of every kernel case."""
    if quick:
        return [(8, "float64", "tanh")]
    return [(C, dt, act) for dt in ("float64", "float32") for C in (4, 8, 16, 32, 64)
            for act in ("tanh", "relu", "smoothrelu")]


def library_of(rev: str, workdir: str):
    """REV's host kernels, compiled from its ``kernels/`` in ``workdir`` (one command, as any revision's
    sources build), declared as this tree's."""
    from gpubraid.runtime import host, host_build

    src = Path(workdir) / "kernels"
    src.mkdir()
    for name in (host_build.SOURCE, *host_build.HEADERS):
        got = subprocess.run(["git", "-C", str(common.REPO), "show", f"{rev}:kernels/{name}"], capture_output=True)
        if got.returncode:
            raise SystemExit(f"--against {rev}: no kernels/{name} there ({got.stderr.decode().strip()})")
        (src / name).write_bytes(got.stdout)
    so = Path(workdir) / "rev.so"
    built = subprocess.run([*host_build.compiler(), *host_build.FLAGS, "-I", str(src), "-o", str(so),
                            str(src / host_build.SOURCE), *host_build.LIBS], capture_output=True, text=True, timeout=600)
    if built.returncode:
        raise SystemExit(f"--against {rev}: its kernels did not compile: {built.stderr.strip().splitlines()[-1:]}")
    lib = ctypes.CDLL(str(so))
    lib.gb_host_abi.restype = ctypes.c_int
    if lib.gb_host_abi() != host.ABI:
        raise SystemExit(f"{rev}'s kernels have calling convention {lib.gb_host_abi()}, this tree's {host.ABI}")
    host._declare(lib)
    return lib


def measure(C: int, dtype: str, act: str, libs: dict, B: int, layers: int, rounds: int) -> dict:
    """ns per layer and sample of a forward and a backward sweep with each of ``libs`` (name -> library),
    interleaved over ``rounds``; and whether they give the same bits."""
    from gpubraid.network.activations import CODES
    from gpubraid.runtime import host

    rng = np.random.default_rng(0)
    K = (rng.standard_normal((layers, C, C)) / np.sqrt(C)).astype(dtype)
    b = (0.1 * rng.standard_normal((layers, C))).astype(dtype)
    h = np.full(layers, 5.0 / 64, dtype)
    u0 = rng.standard_normal((B, C)).astype(dtype)
    code = CODES[act]
    times = {name: ([], []) for name in libs}
    digest = {}
    arrays = {name: (np.empty((layers + 1, B, C), dtype), np.empty_like(K), np.empty_like(b)) for name in libs}
    for k in range(rounds + 1):  # the first round warms up (page faults, caches), untimed
        for name, lib in libs.items():
            host.library = lambda lib=lib: lib
            U, gK, gb = arrays[name]
            U[0], gK[...], gb[...] = u0, 0, 0
            t0 = time.perf_counter()
            D = host.sweep_forward(U, K, b, h, code, True)
            t1 = time.perf_counter()
            lam = U[-1].copy()
            host.sweep_backward_through(U, lam, K, b, h, code, D, gK, gb)
            t2 = time.perf_counter()
            if k:
                times[name][0].append(t1 - t0)
                times[name][1].append(t2 - t1)
            digest[name] = hashlib.sha256(b"".join(a.tobytes() for a in (U, D, lam, gK, gb))).hexdigest()
    row = {"C": C, "dtype": dtype, "activation": act, "B": B, "layers": layers,
           "same_bits": len(set(digest.values())) == 1}
    for name, (f, bw) in times.items():
        row[name] = {"forward_ns": 1e9 * common.median(f) / (layers * B),
                     "backward_ns": 1e9 * common.median(bw) / (layers * B)}
    return row


def kernels(rev: str, quick: bool, rounds: int) -> list[dict]:
    from gpubraid.runtime import host
    from gpubraid.runtime.allocator import keep_freed_memory

    keep_freed_memory()  # as training does: σ'(z) of every call reuses freed memory, no fresh page faults
    new = host.library()
    if new is None:
        raise SystemExit(f"host kernels unavailable: {host.status()}")
    with tempfile.TemporaryDirectory() as tmp:
        libs = {rev: library_of(rev, tmp), "working tree": new}
        B, layers = (64, 4) if quick else (625, 32)
        rows = [measure(C, dt, act, libs, B, layers, rounds) for C, dt, act in cases(quick)]
    host.library = lambda: new
    return rows


def training(rev: str, quick: bool, rounds: int) -> list[dict]:
    """Each workload on REV's code and this tree's, alternately, ``rounds`` times."""
    workloads = QUICK_WORKLOADS if quick else WORKLOADS
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "rev")
        subprocess.run(["git", "-C", str(common.REPO), "worktree", "add", "--detach", tree, rev], check=True,
                       capture_output=True)
        os.chdir(tmp)  # `python -m` puts the working directory first on the path, before PYTHONPATH
        try:
            code = {rev: tree, "working tree": str(common.REPO)}
            out = []
            for label, ranks, args, iterations in workloads:
                secs = {name: [] for name in code}
                hist = {}
                for _ in range(rounds):
                    for name, path in code.items():
                        m = common.train_cli(ranks, [*args, "--iterations", str(iterations), "--val-every", "0"], tmp,
                                             env={"PYTHONPATH": path})
                        secs[name].append(common.seconds_per_step(m, skip=2, per_evaluation=True))
                        hist[name] = [(s["objective"], s["grad_norm"]) for s in m["history"]]
                row = {"workload": label, "ranks": ranks, "iterations": iterations,
                       "same_history": len({json.dumps(v) for v in hist.values()}) == 1}
                for name, v in secs.items():
                    row[name] = {"s_per_eval": common.median(v), "rounds": v}
                row["ratio"] = row["working tree"]["s_per_eval"] / row[rev]["s_per_eval"]
                print(f"{label}: {row[rev]['s_per_eval']:.5f} -> {row['working tree']['s_per_eval']:.5f} s/eval "
                      f"({row['ratio']:.3f}), same history: {row['same_history']}", file=sys.stderr)
                out.append(row)
        finally:
            os.chdir(here)
            subprocess.run(["git", "-C", str(common.REPO), "worktree", "remove", "--force", tree], capture_output=True)
    return out


def run(rev: str, quick: bool, rounds: int, train: bool) -> dict:
    got = subprocess.run(["git", "-C", str(common.REPO), "rev-parse", "--short", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)
    if got.returncode:
        raise SystemExit(f"--against: {rev!r} is not a commit of this repository")
    resolved = got.stdout.strip()
    rows = kernels(resolved, quick, rounds)
    results = {"against": resolved, "kernels": rows, "training": training(resolved, quick, rounds) if train else []}
    return common.document(NAME, {"against": resolved, "rounds": rounds}, results)


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    res = doc["results"]
    rev = res["against"]
    fig, axes = common.subplots(1, 2 if res["training"] else 1, figsize=(11 if res["training"] else 7, 4), squeeze=False)
    ax = axes[0][0]
    labels = [f"{r['dtype'][5:]} C={r['C']} {r['activation'][:5]}" for r in res["kernels"]]
    for k, part in enumerate(("forward_ns", "backward_ns")):
        ratio = [r["working tree"][part] / r[rev][part] for r in res["kernels"]]
        ax.bar(np.arange(len(labels)) + 0.4 * k, ratio, 0.4, label=part.split("_")[0])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(labels)) + 0.2, labels, rotation=90, fontsize=6)
    ax.set(ylabel=f"time per layer and sample, working tree / {rev}", title="host kernels side by side")
    ax.legend(fontsize=7)
    if res["training"]:
        ax = axes[0][1]
        ratio = [r["ratio"] for r in res["training"]]
        ax.bar(range(len(ratio)), ratio)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(ratio)), [r["workload"] for r in res["training"]], rotation=30, ha="right", fontsize=7)
        ax.set(ylabel=f"s per evaluation, working tree / {rev}", title="training, side by side")
    return common.save_figure(fig, json_path, png_path)


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--against", default="HEAD", help="git revision whose kernels to compare with (default HEAD)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; --quick 2)")
    p.add_argument("--no-train", action="store_true", help="the kernels only")
    args = p.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 7)
    common.finish(NAME, run(args.against, args.quick, rounds, not args.no_train), args, plot)


if __name__ == "__main__":
    main()
