"""Serial propagation vs MGRIT (one process, NumPy) for deep narrow dense networks.

    python -m bench.solves [--quick] [--out DIR]

Network: dense, C = 8 channels, batch B = 8, tanh, weights N(0, 1/C) (init_scale 1), biases 0,
final time T = 5 (the peaks default), h = T/N: deeper networks are finer in time.  (With a fixed
h = 0.1, i.e. T = 0.1·N, FCF needed 9, 25 and > 100 iterations at N = 64, 256, 1024 in a trial
run on this machine: MGRIT does not converge within a useful count for long final times, so
the sweep uses T fixed; ``--h`` selects the fixed-h variant.)  For each N the forward solve (states) and the adjoint
solve (linearised at the serial states, λ_N from the cross-entropy of a random linear classifier)
are timed three ways, interleaved within each repeat: layer-serial, MGRIT with FCF (nrelax 1) and
MGRIT with F-relaxation (nrelax 0); cfactor 4, max_levels 10, min_coarse 2, absolute tol 1e-9,
max_iter 100.  Recorded: median times, MGRIT/serial ratios, iterations, residual histories,
step applications per level (this process = all of them), phase seconds, and the marginal work
of one iteration: (steps after k+1 iterations − steps after k) / N, from two fixed-count solves.
"""
from __future__ import annotations

import time

import numpy as np  # noqa: E402

from bench import common
from gpubraid.network.network import ResNetODE  # noqa: E402
from gpubraid.network.reference import backward_adjoints, forward_states  # noqa: E402
from gpubraid.runtime.backend import resolve_backend  # noqa: E402
from gpubraid.solver.mgrit import MGRIT
from gpubraid.solver.options import MGRITOptions  # noqa: E402

NAME = "solves"
C, B, T_FINAL = 8, 8, 5.0
H_STEP = None  # set by --h: fixed step (T = h·N) instead of T_FINAL


def final_time(N):
    return H_STEP * N if H_STEP else T_FINAL


def problem(N, seed=0):
    be = resolve_backend("numpy", "float64")
    model = ResNetODE("dense", (C,), C, N, 4, final_time(N), "tanh", be)
    lay = model.layout()
    theta = model.init_params(lay, seed=seed, scale=1.0)
    P = lay.views(theta)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C))
    y = rng.integers(0, 4, B)
    return be, model, P, x, y


class Solvers:
    """Serial and MGRIT forward/adjoint solves of one network, sharing the setup."""

    def __init__(self, N, seed=0):
        self.be, self.model, self.P, self.x, self.y = problem(N, seed)
        self.N = N
        m = self.model
        self.u0 = m.open_forward(self.x, self.P)
        self.U = forward_states(m, self.P, self.x)
        _, _, self.lamN = m.loss(self.U[-1], self.y, self.P, m.layout().views(np.zeros(m.layout().size)))
        K, b = self.P.layers()
        self.adj_data = (np.ascontiguousarray(K[::-1]), np.ascontiguousarray(b[::-1]),
                         np.ascontiguousarray(self.U[:-1][::-1]))
        self.h_rev = m.h[::-1].copy()

    def serial_forward(self):
        return forward_states(self.model, self.P, self.x)

    def serial_adjoint(self):
        return backward_adjoints(self.model, self.P, self.U, self.lamN)

    def mgrit_forward(self, opts):
        solver = MGRIT(None, [0], [0, self.N], self.model.h, opts, self.be)
        u0 = self.model.open_forward(self.x, self.P)
        return solver.solve(self.model.step.forward, self.P.layers(), u0, (B, C))

    def mgrit_adjoint(self, opts):
        step = self.model.step
        solver = MGRIT(None, [0], [0, self.N], self.h_rev, opts, self.be)

        def psi(w, d, h):
            return step.adjoint(d[2], w, d[:2], h)

        return solver.solve(psi, self.adj_data, self.lamN, (B, C))


def variants():
    base = dict(cfactor=4, max_levels=10, min_coarse=2, tol=1e-9, max_iter=100)
    return {"FCF": MGRITOptions(nrelax=1, **base), "F": MGRITOptions(nrelax=0, **base)}


def marginal_work(s: Solvers, opts: MGRITOptions, which: str, k: int = 2) -> dict:
    """Step applications of iteration k+1 alone, over N (fixed-count solves, tol 0)."""
    counts = []
    for it in (k, k + 1):
        o = MGRITOptions(**{**opts.__dict__, "tol": 0.0, "max_iter": it})
        _, st = (s.mgrit_forward if which == "forward" else s.mgrit_adjoint)(o)
        counts.append((sum(st.steps_per_level), list(st.steps_per_level), st.coarse_steps))
    d_total = counts[1][0] - counts[0][0]
    d_level = [b - a for a, b in zip(counts[0][1], counts[1][1])]
    return {"per_iteration_over_N": d_total / s.N, "per_level_over_N": [x / s.N for x in d_level],
            "coarse_steps_per_iteration": counts[1][2] - counts[0][2]}


def run(quick: bool) -> dict:
    Ns = [64, 256, 1024] if quick else [64, 256, 1024, 4096, 16384]
    repeats = 3
    results = []
    for N in Ns:
        s = Solvers(N)
        opts = variants()
        times = {k: [] for k in ("serial_forward", "serial_adjoint", *(f"mgrit_{v}_{w}" for v in opts
                                                                      for w in ("forward", "adjoint")))}
        stats = {}
        Uref, Lref = s.serial_forward(), s.serial_adjoint()
        errors = {}
        for rep in range(repeats + 1):  # first round is the warmup
            for key in times:
                t0 = time.perf_counter()
                if key == "serial_forward":
                    s.serial_forward()
                elif key == "serial_adjoint":
                    s.serial_adjoint()
                else:
                    _, v, w = key.split("_")
                    out, st = (s.mgrit_forward if w == "forward" else s.mgrit_adjoint)(opts[v])
                    stats[f"{v}_{w}"] = st.as_dict()
                    ref = Uref if w == "forward" else Lref[::-1]
                    errors[f"{v}_{w}"] = float(np.abs(out - ref).max() / np.abs(ref).max())
                dt = time.perf_counter() - t0
                if rep > 0:
                    times[key].append(dt)
        med = {k: common.median(v) for k, v in times.items()}
        entry = {"N": N, "T": final_time(N), "times_s": times, "median_s": med, "stats": stats,
                 "max_rel_error_vs_serial": errors, "levels": None, "ratios": {}, "work": {}}
        from gpubraid.solver.grid import build_hierarchy
        lv = build_hierarchy(s.model.h, 4, 10, 2)
        entry["levels"] = [g.N for g in lv]
        for v in opts:
            for w in ("forward", "adjoint"):
                key = f"{v}_{w}"
                st = stats[key]
                entry["ratios"][key] = med[f"mgrit_{key}"] / med[f"serial_{w}"]
                total = sum(st["steps_per_level"]) + st["coarse_steps"]
                it = max(st["iterations"], 1)
                entry["work"][key] = {"iterations": st["iterations"],
                                      "total_steps_over_N": total / N,
                                      "total_steps_over_N_per_iteration": total / N / it,
                                      **marginal_work(s, opts[v], w)}
        results.append(entry)
        print(f"N={N}: " + ", ".join(f"{k} {entry['ratios'][k]:.2f}x it={entry['work'][k]['iterations']} "
                                    f"w/it={entry['work'][k]['per_iteration_over_N']:.2f}N"
                                    for k in entry["ratios"]), flush=True)
    config = {"quick": quick, "kind": "dense", "channels": C, "batch": B, "activation": "tanh",
              "h": H_STEP or "T/N", "final_time": "h*N" if H_STEP else T_FINAL, "init_scale": 1.0, "cfactor": 4, "max_levels": 10,
              "min_coarse": 2, "tol": 1e-9, "max_iter": 100, "variants": {"FCF": "nrelax=1", "F": "nrelax=0"},
              "skip_first_relax": True, "repeats": repeats, "interleaved": True, "Ns": Ns,
              "residual_convention": "XBraid: residual after the relaxation of iteration k, before its coarse correction",
              "work_note": "steps_per_level counts step applications incl. residual/restriction; coarse_steps "
                           "counts the sequential coarsest-level steps (that level's entry in steps_per_level is 0)"}
    return common.document(NAME, config, results)


def plot(json_path, png_path=None):
    doc = common.load_json(json_path)
    R = doc["results"]
    Ns = [r["N"] for r in R]
    fig, axes = common.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    for key, st in (("serial_forward", "k-"), ("serial_adjoint", "k--"), ("mgrit_FCF_forward", "C0-o"),
                    ("mgrit_FCF_adjoint", "C0--s"), ("mgrit_F_forward", "C1-o"), ("mgrit_F_adjoint", "C1--s")):
        ax.loglog(Ns, [r["median_s"][key] for r in R], st, label=key)
    ax.set_xlabel("layers N"); ax.set_ylabel("median wall time [s]"); ax.legend(fontsize=7)
    ax.set_title("one process: serial vs MGRIT"); ax.grid(True, which="both", alpha=0.3)
    ax = axes[1]
    for key, col, mk in (("FCF_forward", "C0", "o"), ("FCF_adjoint", "C0", "s"), ("F_forward", "C1", "o"),
                         ("F_adjoint", "C1", "s")):
        ax.semilogx(Ns, [r["work"][key]["iterations"] for r in R], color=col, marker=mk, ls="-",
                    label=f"{key} iterations")
        ax.semilogx(Ns, [r["work"][key]["per_iteration_over_N"] for r in R], color=col, marker=mk, ls=":",
                    label=f"{key} steps/N per iteration", alpha=0.6)
    ax.set_xlabel("layers N"); ax.legend(fontsize=7); ax.grid(True, alpha=0.3)
    ax.set_title("iterations to 1e-9 and work per iteration")
    ax = axes[2]
    r = R[-1]
    for key, st in (("FCF_forward", "C0-o"), ("FCF_adjoint", "C0--s"), ("F_forward", "C1-o"), ("F_adjoint", "C1--s")):
        res = r["stats"][key]["residuals"]
        ax.semilogy(range(len(res)), res, st, label=key)
    ax.axhline(1e-9, color="k", lw=0.5)
    ax.set_xlabel("iteration"); ax.set_ylabel("C-point residual (XBraid convention)")
    ax.set_title(f"residual histories, N = {r['N']}"); ax.legend(fontsize=7); ax.grid(True, alpha=0.3)
    fig.suptitle(f"gpubraid solves — {doc['machine']['cpu_model']} ({doc['machine']['device']}), {doc['date'][:10]}", fontsize=9)
    return common.save_figure(fig, json_path, png_path, dpi=110)


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--h", type=float, default=None, help="fixed step size (T = h·N) instead of T = 5")
    args = p.parse_args(argv)
    global H_STEP
    H_STEP = args.h
    doc = run(args.quick)
    common.finish(NAME, doc, args, plot)


if __name__ == "__main__":
    main()
