"""Self-test of a residual step against the protocol of :mod:`gpubraid.network.steps` (like XBraid's braid_Test*).

Run it on your own step before training with it::

    from gpubraid.network.selftest import check_step
    report = check_step(my_step)
    print(report)            # one line per check: PASS/FAIL, what was measured
    assert report.ok

Checks (all in float64 on random data; a step built for float32 is still called with float64
arrays, so build the step on a float64 backend for the test):

    shapes       forward, adjoint and param_grad return arrays of the right shapes and dtype
    zero-step    forward(u, θ, h=0) == u and adjoint(u, λ, θ, h=0) == λ (the update is u + h f)
    adjoint      dot-product test <J v, w> = <v, Jᵀ w>, J v by central finite differences of forward
    param_grad   per group: <∂Φ/∂θ_i δθ_i, w> (finite differences) = <δθ_i, param_grad(u, w)_i>
    batched      L layers in one call equal L one-layer calls (forward, adjoint, param_grad)
    pair         (steps with forward_keep / adjoint_grad) they equal forward, adjoint and param_grad,
                 with what forward_keep kept and with None
    block        (steps with forward_block / backward_block) a sweep of the L layers as one chain, with
                 and without what forward_block kept, equals one forward / adjoint / param_grad per layer
                 (and so does backward_through's λ_0 and gradients, when the step has it)
    chain        (steps with forward_chain / adjoint_chain) the L layers as one chain from a start row
                 with a right-hand side held in the rows themselves equal one forward / adjoint call per
                 row plus the right-hand side
    determinism  the same call twice gives bit-identical results
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class StepReport:
    """Result of :func:`check_step`: ``ok`` is True only when every check passed; ``str()`` is readable."""

    step: str
    checks: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failed(self) -> list:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def __str__(self) -> str:
        lines = [f"step self-test of {self.step}:"]
        w = max((len(c.name) for c in self.checks), default=0)
        for c in self.checks:
            lines.append(f"  {'PASS' if c.ok else 'FAIL'}  {c.name:<{w}}  {c.detail}")
        n_bad = len(self.failed())
        lines.append("  all checks passed" if self.ok else f"  {n_bad} check(s) failed")
        return "\n".join(lines)


def _host(be, a):
    return np.asarray(be.to_host(a) if be is not None else a, dtype=np.float64)


def _rel(a, b) -> float:
    return float(abs(a - b) / max(abs(a), abs(b), 1e-300))


def check_step(step, *, layers: int = 3, batch: int = 4, seed: int = 0, eps: float = 1e-6,
               tol: float = 1e-6, exact_tol: float = 1e-12, param_scale: float = 0.5,
               backend=None) -> StepReport:
    """Run the protocol checks on ``step`` and return a :class:`StepReport`.

    Args:
        step: the step (state_shape, param_shapes, forward, adjoint, param_grad).
        layers, batch: L and B of the random test problem (u (L, B, *S), θ_i (L, *P_i), h (L,)).
        eps: finite-difference step; ``tol``: relative tolerance of the finite-difference checks;
        exact_tol: relative tolerance of the batched-vs-single check.
        param_scale: standard deviation of the random parameters.
        backend: where the step's arrays live; default ``step.be`` when present, else NumPy.
    """
    be = backend if backend is not None else getattr(step, "be", None)
    to_dev = be.asarray if be is not None else np.asarray
    name = type(step).__name__
    report = StepReport(name)
    try:
        S = tuple(int(s) for s in step.state_shape)
        shapes = [tuple(int(d) for d in s) for s in step.param_shapes]
    except Exception as exc:  # noqa: BLE001 - report, don't raise
        report.add("protocol", False, f"state_shape/param_shapes unreadable: {exc!r}")
        return report
    L, B = layers, batch
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((L, B, *S))
    lam = rng.standard_normal((L, B, *S))
    th = [param_scale * rng.standard_normal((L, *s)) for s in shapes]
    h = rng.uniform(0.2, 0.6, L)
    dev = lambda a: to_dev(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    U, LAM, TH, Hd = dev(u), dev(lam), tuple(dev(t) for t in th), dev(h)

    def fwd(uu, tt, hh):
        return _host(be, step.forward(dev(uu), tuple(dev(t) for t in tt), dev(hh)))

    try:
        F = step.forward(U, TH, Hd)
        A = step.adjoint(U, LAM, TH, Hd)
        G = tuple(step.param_grad(U, LAM, TH, Hd))
    except Exception as exc:  # noqa: BLE001
        report.add("calls", False, f"a protocol call raised {type(exc).__name__}: {exc}")
        return report

    # shapes and dtypes
    problems = []
    for what, arr in (("forward", F), ("adjoint", A)):
        if tuple(arr.shape) != (L, B, *S):
            problems.append(f"{what} shape {tuple(arr.shape)} != {(L, B, *S)}")
        if np.dtype(arr.dtype) != np.float64:
            problems.append(f"{what} dtype {arr.dtype} != float64")
    if len(G) != len(shapes):
        problems.append(f"param_grad returned {len(G)} groups; param_shapes has {len(shapes)}")
    for i, (g, s) in enumerate(zip(G, shapes)):
        if tuple(g.shape) != (L, *s):
            problems.append(f"param_grad group {i} shape {tuple(g.shape)} != {(L, *s)}")
        if np.dtype(g.dtype) != np.float64:
            problems.append(f"param_grad group {i} dtype {g.dtype} != float64")
    report.add("shapes", not problems, "; ".join(problems) or
               f"forward/adjoint (L, B, *S) = {(L, B, *S)}, {len(shapes)} parameter group(s), float64")
    if problems:
        return report
    F, A, G = _host(be, F), _host(be, A), [_host(be, g) for g in G]

    # zero step
    Z = dev(np.zeros(L))
    f0 = _host(be, step.forward(U, TH, Z))
    a0 = _host(be, step.adjoint(U, LAM, TH, Z))
    e0 = max(float(np.abs(f0 - u).max()), float(np.abs(a0 - lam).max()))
    report.add("zero-step", e0 <= exact_tol * max(1.0, float(np.abs(u).max())),
               f"max |forward(h=0) - u|, |adjoint(h=0) - lam| = {e0:.2e}")

    # adjoint dot-product test with J v by central differences
    v = rng.standard_normal(u.shape)
    w = rng.standard_normal(u.shape)
    Jv = (fwd(u + eps * v, th, h) - fwd(u - eps * v, th, h)) / (2 * eps)
    JTw = _host(be, step.adjoint(U, dev(w), TH, Hd))
    lhs, rhs = float(np.sum(Jv * w)), float(np.sum(v * JTw))
    err = _rel(lhs, rhs)
    report.add("adjoint", err <= tol, f"<J v, w> = {lhs:.12g}, <v, J^T w> = {rhs:.12g}, rel. diff {err:.1e}")

    # parameter gradient per group by finite differences
    Gw = [_host(be, g) for g in step.param_grad(U, dev(w), TH, Hd)]
    for i, s in enumerate(shapes):
        d = rng.standard_normal((L, *s))
        tp = [t + eps * d if j == i else t for j, t in enumerate(th)]
        tm = [t - eps * d if j == i else t for j, t in enumerate(th)]
        fd = float(np.sum((fwd(u, tp, h) - fwd(u, tm, h)) / (2 * eps) * w))
        an = float(np.sum(d * Gw[i]))
        err = _rel(fd, an)
        gname = (getattr(step, "param_names", None) or [f"p{j}" for j in range(len(shapes))])[i]
        report.add(f"param_grad[{gname}]", err <= tol,
                   f"finite differences {fd:.12g}, param_grad {an:.12g}, rel. diff {err:.1e}")

    # batched over layers == one call per layer
    worst = 0.0
    for k in range(L):
        one = slice(k, k + 1)
        tk = tuple(t[one] for t in TH)
        f1 = _host(be, step.forward(U[one], tk, Hd[one]))[0]
        a1 = _host(be, step.adjoint(U[one], LAM[one], tk, Hd[one]))[0]
        g1 = [_host(be, g)[0] for g in step.param_grad(U[one], LAM[one], tk, Hd[one])]
        pairs = [(F[k], f1), (A[k], a1)] + [(G[i][k], g1[i]) for i in range(len(shapes))]
        for big, small in pairs:
            worst = max(worst, float(np.abs(big - small).max() / max(np.abs(small).max(), 1e-300)))
    report.add("batched", worst <= exact_tol, f"max rel. diff of L={L} layers at once vs one at a time {worst:.1e}")

    if callable(getattr(step, "forward_keep", None)) and callable(getattr(step, "adjoint_grad", None)):
        report.add("pair", *_check_pair(step, be, dev, U, LAM, TH, Hd, (F, A, G), exact_tol))
    if callable(getattr(step, "forward_block", None)) and callable(getattr(step, "backward_block", None)):
        report.add("block", *_check_block(step, be, dev, U, LAM, TH, Hd, exact_tol))
    if callable(getattr(step, "forward_chain", None)) and callable(getattr(step, "adjoint_chain", None)):
        report.add("chain", *_check_chain(step, be, dev, U, LAM, TH, Hd, exact_tol))

    # determinism
    F2 = _host(be, step.forward(U, TH, Hd))
    A2 = _host(be, step.adjoint(U, LAM, TH, Hd))
    G2 = [_host(be, g) for g in step.param_grad(U, LAM, TH, Hd)]
    same = np.array_equal(F, F2) and np.array_equal(A, A2) and all(np.array_equal(a, b) for a, b in zip(G, G2))
    report.add("determinism", same, "repeated calls give bit-identical results" if same
               else "repeated calls give different results")
    return report


def _check_pair(step, be, dev, U, LAM, TH, Hd, ref, exact_tol):
    """(ok, detail): forward_keep / adjoint_grad against forward / adjoint / param_grad (``ref``)."""
    F, A, G = ref
    try:
        out_f, out_a = dev(np.zeros(U.shape)), dev(np.zeros(U.shape))
        kept = step.forward_keep(U, TH, Hd, out_f)
        got = [_host(be, out_f)]
        for k in (kept, None):
            grads = step.adjoint_grad(U, LAM, TH, Hd, k, out_a)
            got += [_host(be, out_a)] + [_host(be, g) for g in grads]
    except Exception as exc:  # noqa: BLE001
        return False, f"forward_keep / adjoint_grad raised {type(exc).__name__}: {exc}"
    want = [F] + 2 * ([A] + list(G))
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return False, "forward_keep / adjoint_grad results have the wrong number or shapes"
    worst = max(float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-300)) for g, w in zip(got, want))
    return worst <= exact_tol, f"max rel. diff from forward, adjoint and param_grad {worst:.1e}"


def _check_block(step, be, dev, U, LAM, TH, Hd, exact_tol):
    """(ok, detail): forward_block / backward_block over the L layers as one chain from U[0], with
    λ_L = LAM[0], against one forward, adjoint and param_grad call per layer (to round-off)."""
    L = U.shape[0]
    layer = lambda k: tuple(t[k:k + 1] for t in TH)  # noqa: E731
    us, lams, grads = [U[0:1]], [LAM[0:1]], []
    for k in range(L):
        us.append(step.forward(us[k], layer(k), Hd[k:k + 1]))
    for k in reversed(range(L)):
        grads.insert(0, step.param_grad(us[k], lams[0], layer(k), Hd[k:k + 1]))
        lams.insert(0, step.adjoint(us[k], lams[0], layer(k), Hd[k:k + 1]))
    want = [_host(be, x[0]) for x in us + lams] + [_host(be, g[j][0]) for j in range(len(TH)) for g in grads]
    worst, used = 0.0, []
    for keep in (True, False):
        try:
            Ub, Lb = dev(np.zeros((L + 1, *U.shape[1:]))), dev(np.zeros((L + 1, *U.shape[1:])))
            Ub[0], Lb[L] = U[0], LAM[0]
            kept = step.forward_block(Ub, TH, Hd, keep)
            if kept is NotImplemented:
                continue
            gb = tuple(dev(np.zeros(t.shape)) for t in TH)
            if not step.backward_block(Ub, Lb, TH, Hd, gb, kept):
                continue
        except Exception as exc:  # noqa: BLE001
            return False, f"forward_block / backward_block raised {type(exc).__name__}: {exc}"
        got = [_host(be, Ub[k]) for k in range(L + 1)] + [_host(be, Lb[k]) for k in range(L + 1)] + \
              [_host(be, g[k]) for g in gb for k in range(L)]
        pairs = list(zip(got, want))
        if callable(getattr(step, "backward_through", None)):
            try:
                lam = dev(np.array(LAM[0]))
                gt = tuple(dev(np.zeros(t.shape)) for t in TH)
                through = step.backward_through(Ub, lam, TH, Hd, gt, step.forward_block(Ub, TH, Hd, keep))
            except Exception as exc:  # noqa: BLE001
                return False, f"backward_through raised {type(exc).__name__}: {exc}"
            if through:
                pairs += [(_host(be, lam), want[L + 1])] + \
                    list(zip([_host(be, g[k]) for g in gt for k in range(L)], want[2 * L + 2:]))
        worst = max([worst] + [float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-300)) for g, w in pairs])
        used.append("kept" if keep else "recomputed")
    if not used:
        return True, "the block form declined these arrays (the sweeps then call the step per layer)"
    return worst <= exact_tol, f"max rel. diff from per-layer calls {worst:.1e} ({' and '.join(used)} σ')"


def _check_chain(step, be, dev, U, LAM, TH, Hd, exact_tol):
    """(ok, detail): forward_chain / adjoint_chain over the L layers from U[0] (adjoint: from LAM[0],
    linearised at U) with the right-hand side LAM in the rows themselves, against one forward /
    adjoint call per row plus the right-hand side (to round-off)."""
    L, worst, used = U.shape[0], 0.0, []
    layer = lambda k: tuple(t[k:k + 1] for t in TH)  # noqa: E731
    for kind in ("forward", "adjoint"):
        start = U[0] if kind == "forward" else LAM[0]
        want, prev = [], start[None]
        for k in range(L):
            v = step.forward(prev, layer(k), Hd[k:k + 1]) if kind == "forward" else \
                step.adjoint(U[k:k + 1], prev, layer(k), Hd[k:k + 1])
            prev = v + LAM[k:k + 1]
            want.append(_host(be, prev[0]))
        rows = dev(np.array(_host(be, LAM)))
        try:
            done = step.forward_chain(dev(np.array(_host(be, start))), rows, TH, Hd, rows) if kind == "forward" \
                else step.adjoint_chain(dev(np.array(_host(be, start))), rows, U, TH, Hd, rows)
        except Exception as exc:  # noqa: BLE001
            return False, f"{kind}_chain raised {type(exc).__name__}: {exc}"
        if done:
            got = _host(be, rows)
            worst = max([worst] + [float(np.abs(got[k] - want[k]).max() / max(np.abs(want[k]).max(), 1e-300))
                                   for k in range(L)])
            used.append(kind)
    if not used:
        return True, "the chains declined these arrays (the coarsest solve then steps row by row)"
    return worst <= exact_tol, f"max rel. diff from per-row calls {worst:.1e} ({' and '.join(used)})"


def exit_code(report: StepReport) -> int:
    """0 when every check passed, 1 otherwise (for a command line)."""
    return 0 if report.ok else 1


def run(step, file=sys.stdout, **kwargs) -> int:
    """Check ``step``, print the report to ``file`` and return the exit code (0 ok, 1 failed)."""
    report = check_step(step, **kwargs)
    print(report, file=file)
    return exit_code(report)
