"""One-shot's convergence monitor: is the inexact gradient still good enough to train on?

One-shot MGRIT runs one (or a few) warm-started iterations per solve, so its gradient carries an
error that grows with the number of levels (``bench/README.md``, "One-shot at less work": 64 peaks
layers, one iteration, 5.6 % with 2 levels, 20 % with 5) and with how fast the parameters move.
Every ``every`` steps (and at the powers of two before the first of them, 1, 2, 4, 8 for 10, where
the error grows fastest), and at the step after a failed line search, the monitor compares the
one-shot gradient of the step's first evaluation with serial's at the same parameters (one
layer-serial evaluation by the micro-batch pipeline, the warm-start rows left alone):

    e = ‖g_oneshot − g‖ / ‖g‖,   cos = ⟨g_oneshot, g⟩ / (‖g_oneshot‖ ‖g‖)

and acts on the level cap of the following solves (:attr:`LayerParallel.level_cap`):

    e > tol                       one level fewer than that evaluation used (down to one level: the
                                  pipeline, serial's gradient); fewer levels mean a smaller gradient
                                  error and, at a coarsening factor of 2, fewer step applications
    e ≤ tol/4 at `relax` checks   one level more (back to the solver's own choice), so a cap set
      in a row under a cap        early in training does not stay when one-shot has become accurate

A raised cap is on probation: the next step is checked too, whatever ``every`` says.  If that check
takes the level off again, the raise came too early and the next one waits for twice as many good
checks (``relax``: RELAX, then 2·RELAX, 4·RELAX, ...); so where one-shot's gradient stays poor (the
paper's peaks settings at 32 layers: 10–24 % with two levels after the first steps) training runs a
single step, not ``every`` steps, on it after each raise, and the raises thin out.

While one-shot's gradient stays well within the tolerance (e ≤ tol/4) at the solver's own levels,
the regular checks thin out: after the one at ``every`` steps they come at 2, 4 and 8 × ``every``
and then every BACKOFF × ``every`` steps (a check costs a serial evaluation: at the default 10, a
tenth of the steps otherwise).  Any check above tol/4, and any change of the cap, starts the
spacing again at ``every`` from that step's multiple of ``every``; under a cap the checks stay
``every`` apart.  The regular checks stay on the multiples of ``every``, so a run whose checks all
find more than tol/4, or that keeps a cap, is checked at the steps it always was.

A check of an evaluation that kept one level compares serial with itself: it is skipped (it counts
as a good check under a cap).  The outcome is in the history entry (``monitor``) and the log line;
the cap, the count of good checks, ``relax`` and the probation are restored on resumption from the
last such entry, and the spacing from the last entry whose check was above tol/4 or moved the cap.
"""
from __future__ import annotations

import math

#: Good checks in a row (e ≤ tol/4) before a cap is raised by one level.
RELAX = 3
#: The longest gap between regular checks, in ``every`` s, while the gradient stays within tol/4.
BACKOFF = 8


class Monitor:
    """The convergence monitor of one training run.

    Args:
        every: steps between checks (0: off).
        tol: the largest relative gradient error one-shot may keep training with.
        n_levels: the levels of the forward solver's hierarchy (a cap that reaches it is lifted).
    """

    def __init__(self, every: int, tol: float, n_levels: int):
        self.every, self.tol, self.n_levels = int(every), float(tol), int(n_levels)
        self.good, self.relax, self.probation = 0, RELAX, False
        self.anchor, self.capped = 0, False   # the step the spacing starts from; a cap in force

    def due(self, it: int, failures: int) -> bool:
        """Whether step ``it`` (0-based) is checked: at the regular checks (``every`` steps apart from
        the anchor, the gaps doubling up to BACKOFF × ``every`` while no cap is in force), at the
        powers of two below ``every`` (1, 2, 4, 8 for 10), after a failed line search, and right
        after a raise of the cap."""
        if self.every <= 0:
            return False
        early = it < self.every and it & (it - 1) == 0
        k = it - self.anchor
        n = k // self.every if k >= 0 and k % self.every == 0 else -1
        regular = n >= 0 and (self.capped or n % BACKOFF == 0 or n & (n - 1) == 0)
        return regular or early or failures > 0 or self.probation

    def check(self, lp, theta, x, y, batch: int, ev, levels: int, it: int = 0) -> dict:
        """Compare ``ev`` (the one-shot evaluation at ``theta`` in step ``it``, ``levels`` its forward
        solve's levels) with serial's gradient; set ``lp.level_cap`` for the next solves.  Returns the
        history record: grad_error, cos, objective_error (|f̃ − f| / |f|, recorded, not acted on),
        levels, cap (None: the solver's choice), good, relax, probation (the next step is checked),
        trial (this check ended a probation), action, steps (the check's step applications, 2N)."""
        out = {"levels": int(levels), "grad_error": None, "cos": None}
        cap = lp.level_cap
        if levels > 1:
            ex = lp.evaluate_exact(theta, x, y, batch)
            d = ev.grad - ex.grad
            gg, oo, dd, go = lp.dots(((ex.grad, ex.grad), (ev.grad, ev.grad), (d, d), (ev.grad, ex.grad)))
            err = math.sqrt(dd / gg) if gg > 0 else 0.0
            cos = go / math.sqrt(gg * oo) if gg > 0 and oo > 0 else 1.0
            f_err = abs(ev.objective - ex.objective) / abs(ex.objective) if ex.objective else 0.0
            out.update(grad_error=err, cos=cos, objective_error=f_err, steps=2 * lp.model.layers)
        else:
            err = 0.0
            out["steps"] = 0
        probation, self.probation = self.probation, False
        if err > self.tol:
            cap, self.good = max(1, levels - 1), 0
            if probation:  # the raise came too early
                self.relax *= 2
            action = f"at most {cap} levels" if cap > 1 else "one level (pipeline, serial's gradient)"
        elif cap is not None and err <= self.tol / 4:
            self.good += 1
            action = "keep"
            if self.good >= self.relax:
                cap, self.good = (cap + 1 if cap + 1 < self.n_levels else None), 0
                self.probation = True
                action = f"at most {cap} levels" if cap is not None else "levels by the solver's choice"
        else:
            self.good, action = 0, "keep"
        if err > self.tol / 4 or action != "keep":  # the checks come every ``every`` steps again
            self.anchor = it - it % self.every
        lp.level_cap, self.capped = cap, cap is not None
        out.update(cap=cap, good=self.good, relax=self.relax, probation=self.probation, trial=probation,
                   action=action)
        return out

    @staticmethod
    def worth_recording(record: dict) -> bool:
        """Whether a check goes into the history: a comparison was made, a cap is (or was) set, or it
        ended a probation."""
        return (record["grad_error"] is not None or record["cap"] is not None or record["action"] != "keep"
                or record["trial"])

    def resume(self, lp, history: list) -> None:
        """Restore the cap, the count of good checks, ``relax`` and the probation from the last record in
        ``history`` (records of before the probation: RELAX, none), and the spacing's anchor from the
        last record of a check above tol/4 or one that moved the cap (none: the first step)."""
        records = [(e["iter"], e["monitor"]) for e in history if "monitor" in e]
        if records:
            rec = records[-1][1]
            lp.level_cap, self.good = rec["cap"], rec["good"]
            self.relax, self.probation = rec.get("relax", RELAX), rec.get("probation", False)
            self.capped = rec["cap"] is not None
        self.anchor = next((it - it % self.every for it, rec in reversed(records) if rec["action"] != "keep"
                            or (rec["grad_error"] or 0.0) > self.tol / 4), 0) if self.every > 0 else 0


def describe(record: dict) -> str:
    """The log line's part for a monitor record."""
    if record["grad_error"] is None:
        return "monitor: one level"
    return f"monitor: grad err {record['grad_error']:.1%} (cos {record['cos']:.3f}), {record['action']}"
