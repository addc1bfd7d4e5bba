"""One-shot's convergence monitor: the gradient error it measures, the level caps it sets, the log
line and the history, and an exact resume with a cap in force."""
import math

import numpy as np
import pytest

from gpubraid.cli.main import iteration_line
from gpubraid.network.reference import evaluate
from gpubraid.training import monitor as mon
from gpubraid.training.config import TrainConfig
from gpubraid.training.methods import levels_for_ranks, make_method
from gpubraid.training.trainer import Trainer

#: The paper's peaks settings, small: one-shot keeps 2-3 levels here (without the cap for one rank).
PAPER = dict(example="peaks", layers=32, final_time=1.0, activation="smoothrelu", n_train=200, n_val=50,
             val_every=0, progress=False, method="oneshot", levels_for_ranks=False)


class FakeLP:
    """What the monitor uses of a LayerParallel: a serial gradient, dot products, the cap."""

    class model:
        layers = 8

    def __init__(self, g):
        self.g, self.level_cap = np.asarray(g, float), None

    def evaluate_exact(self, theta, x, y, batch):
        return type("Ev", (), {"grad": self.g, "objective": 2.0})

    @staticmethod
    def dots(pairs):
        return [float(np.dot(a, b)) for a, b in pairs]


def ev(g, objective=2.5):
    return type("Ev", (), {"grad": np.asarray(g, float), "objective": objective})


def test_the_error_and_the_caps_it_sets():
    lp, m = FakeLP([3.0, 4.0]), mon.Monitor(5, 0.1, n_levels=6)
    rec = m.check(lp, None, None, None, 1, ev([3.0, 4.5]), levels=4)  # error 0.5 / 5 = 10 %: kept
    assert rec["grad_error"] == pytest.approx(0.1) and rec["cos"] == pytest.approx(27 / (5 * math.hypot(3, 4.5)))
    assert rec["action"] == "keep" and lp.level_cap is None and rec["steps"] == 16
    assert rec["objective_error"] == pytest.approx(0.25)
    rec = m.check(lp, None, None, None, 1, ev([3.0, 5.0]), levels=4)  # 20 %: one level fewer
    assert lp.level_cap == rec["cap"] == 3 and rec["action"] == "at most 3 levels" and m.worth_recording(rec)
    rec = m.check(lp, None, None, None, 1, ev([3.0, 5.0]), levels=2)
    assert lp.level_cap == 1 and "one level" in rec["action"]
    # under a cap, RELAX good checks in a row (one-level evaluations count) raise it by one
    for k in range(mon.RELAX - 1):
        rec = m.check(lp, None, None, None, 1, ev([3.0, 4.0]), levels=1)
        assert rec["grad_error"] is None and rec["steps"] == 0 and lp.level_cap == 1 and rec["good"] == k + 1
    rec = m.check(lp, None, None, None, 1, ev([3.0, 4.0]), levels=1)
    assert lp.level_cap == 2 and rec["good"] == 0
    lp.level_cap = 5
    for _ in range(mon.RELAX):
        rec = m.check(lp, None, None, None, 1, ev([3.0, 4.01]), levels=5)
    assert lp.level_cap is None and rec["action"] == "levels by the solver's choice"
    assert m.worth_recording(m.check(lp, None, None, None, 1, ev([1.0, 1.0]), levels=1))  # ends the probation
    assert not m.worth_recording(m.check(lp, None, None, None, 1, ev([1.0, 1.0]), levels=1))
    assert mon.describe(rec).startswith("monitor: grad err 0.2% (cos 1.000)")
    # every 5 steps, and at the steps 1, 2, 4 before the first five (the error grows fastest early)
    assert [m.due(it, 0) for it in range(12)] == [True, True, True, False, True, True] + [False] * 4 + [True, False]
    assert m.due(3, 1) and not mon.Monitor(0, 0.1, 6).due(0, 1)


def test_a_raised_cap_is_on_probation_and_a_failed_raise_doubles_the_wait():
    """After a raise the next step is checked; if that check takes the level off again, the next
    raise needs twice as many good checks.  One-level checks count as good without a comparison."""
    lp, m = FakeLP([3.0, 4.0]), mon.Monitor(10, 0.1, n_levels=3)
    m.check(lp, None, None, None, 1, ev([3.0, 5.0]), levels=2)  # 20 %: one level
    assert lp.level_cap == 1 and not m.due(13, 0)
    for _ in range(mon.RELAX):
        rec = m.check(lp, None, None, None, 1, ev([3.0, 4.0]), levels=1)
    assert lp.level_cap == 2 and rec["probation"] and m.due(13, 0) and m.worth_recording(rec)
    rec = m.check(lp, None, None, None, 1, ev([3.0, 5.0]), levels=2)  # still 20 %: the raise was early
    assert lp.level_cap == 1 and rec["trial"] and rec["relax"] == 2 * mon.RELAX and not m.due(13, 0)
    for k in range(2 * mon.RELAX):
        assert lp.level_cap == 1, k
        rec = m.check(lp, None, None, None, 1, ev([3.0, 4.0]), levels=1)
    assert lp.level_cap == 2 and rec["probation"]
    rec = m.check(lp, None, None, None, 1, ev([3.0, 4.01]), levels=2)  # a good probation: the cap stays raised
    assert rec["trial"] and not rec["probation"] and rec["relax"] == 2 * mon.RELAX and m.worth_recording(rec)
    # a probation check whose step kept one level compares nothing, and is recorded all the same
    lp2, m2 = FakeLP([3.0, 4.0]), mon.Monitor(10, 0.1, n_levels=3)
    m2.check(lp2, None, None, None, 1, ev([3.0, 5.0]), levels=2)
    for _ in range(mon.RELAX):
        m2.check(lp2, None, None, None, 1, ev([3.0, 4.0]), levels=1)
    lp2.level_cap = None
    rec = m2.check(lp2, None, None, None, 1, ev([3.0, 4.0]), levels=1)
    assert rec["grad_error"] is None and rec["cap"] is None and rec["trial"] and m2.worth_recording(rec)
    # resumption restores relax and the probation (records of before them: RELAX, none)
    m3 = mon.Monitor(10, 0.1, n_levels=3)
    m3.resume(lp, [{"iter": 14, "monitor": {"cap": 2, "good": 0, "relax": 12, "probation": True,
                                            "action": "at most 2 levels", "grad_error": 0.0}}])
    assert (lp.level_cap, m3.relax, m3.probation, m3.anchor) == (2, 12, True, 10)
    m3.resume(lp, [{"iter": 7, "monitor": {"cap": 1, "good": 2, "action": "keep", "grad_error": None}}])
    assert (lp.level_cap, m3.good, m3.relax, m3.probation) == (1, 2, mon.RELAX, False)


def test_checks_thin_out_while_the_error_stays_small_and_come_back_when_it_grows():
    """Regular checks at 0, 10, 20, 40, 80 and then every 80 steps while each finds e <= tol/4 with no
    cap; a check above tol/4 (kept or not) restarts the spacing from its step, and under a cap the
    checks stay ``every`` steps apart; a resume takes the anchor from the history."""
    lp, m = FakeLP([3.0, 4.0]), mon.Monitor(10, 0.1, n_levels=4)
    regular = [it for it in range(10, 400) if m.due(it, 0)]
    assert regular == [10, 20, 40, 80, 160, 240, 320]
    assert [it for it in range(10) if m.due(it, 0)] == [0, 1, 2, 4, 8]
    m.check(lp, None, None, None, 1, ev([3.0, 4.01]), levels=3, it=160)        # 0.2 %: the spacing goes on
    assert m.anchor == 0 and m.due(240, 0) and not m.due(170, 0)
    m.check(lp, None, None, None, 1, ev([3.0, 4.2]), levels=3, it=240)         # 4 % > tol/4: kept, every 10 again
    assert lp.level_cap is None and m.anchor == 240
    assert [it for it in range(240, 330) if m.due(it, 0)] == [240, 250, 260, 280, 320]
    m.check(lp, None, None, None, 1, ev([3.0, 5.0]), levels=3, it=260)         # 20 %: a cap, every 10 steps
    assert lp.level_cap == 2 and [it for it in range(260, 330) if m.due(it, 0)] == list(range(260, 330, 10))
    m.check(lp, None, None, None, 1, ev([3.0, 4.2]), levels=2, it=263)         # off the multiples (a probation)
    assert m.anchor == 260                                                      # the checks stay on them
    history = [{"iter": 244, "monitor": {"cap": None, "good": 0, "action": "keep", "grad_error": 0.04}},
               {"iter": 300, "monitor": {"cap": None, "good": 0, "action": "keep", "grad_error": 0.002}}]
    again = mon.Monitor(10, 0.1, n_levels=4)
    again.resume(FakeLP([1.0]), history)
    assert again.anchor == 240 and not again.capped and again.due(320, 0) and not again.due(330, 0)
    assert mon.Monitor(10, 0.1, n_levels=4).due(160, 0) and not mon.Monitor(10, 0.5, 4).due(170, 0)


def resumed_equals_uninterrupted(tmp_path, cfg: dict, stop: int) -> list:
    """Train ``cfg`` through, and again stopped after ``stop`` steps and resumed from its checkpoint:
    the two histories (time left out) must be equal.  Returns the uninterrupted history."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref = Trainer(TrainConfig(**cfg, checkpoint_dir=str(tmp_path / "a"))).run()
    Trainer(TrainConfig(**{**cfg, "iterations": stop}, checkpoint_dir=str(tmp_path / "b"))).run()
    got = Trainer(TrainConfig(**cfg, checkpoint_dir=str(tmp_path / "b"), resume=str(tmp_path / "b"))).run()
    strip = [{k: v for k, v in e.items() if k != "time_s"} for e in ref.history]
    assert [{k: v for k, v in e.items() if k != "time_s"} for e in got.history] == strip
    return ref.history


def test_resume_while_the_checks_are_spaced_out_equals_the_uninterrupted_run(tmp_path):
    cfg = dict(PAPER, iterations=20, monitor_every=2, monitor_tol=10.0, checkpoint_every=7)
    history = resumed_equals_uninterrupted(tmp_path, cfg, 14)
    assert [e["iter"] for e in history if "monitor" in e] == [0, 1, 2, 4, 8, 16]


def test_the_measured_error_is_one_shots_and_a_strict_tolerance_brings_serials_gradient():
    """On the paper's settings one-shot's gradient differs from serial's; with a tolerance below
    that error every comparison takes a level off what the evaluation used, the next steps keep
    under the cap (one level: the pipeline, serial's gradient), and good checks raise it again."""
    tr = Trainer(TrainConfig(**PAPER, iterations=10, monitor_every=1, monitor_tol=1e-9))
    res = tr.run()
    checks = [e["monitor"] for e in res.history if "monitor" in e]
    first = checks[0]
    assert first["levels"] > 1 and 1e-6 < first["grad_error"] < 1 and first["cap"] == first["levels"] - 1
    assert all(c["cap"] == c["levels"] - 1 for c in checks if c["grad_error"] is not None)
    # (a step's entry shows its start point, which L-BFGS evaluated in the step before: a cap set in
    # step k holds from step k + 2's entry on)
    for k in range(len(res.history) - 2):
        caps = [res.history[j]["monitor"]["cap"] for j in (k, k + 1)]
        assert res.history[k + 2]["levels"] <= max(c or 99 for c in caps)
    assert any(e["levels"] == 1 for e in res.history[2:])
    assert [c["cap"] for c in checks].count(1) >= mon.RELAX and 2 in [c["cap"] for c in checks[mon.RELAX:]]
    # the serial gradient the monitor compares with is serial's: checked at the final parameters
    x, y, B = tr.data.take("train", None, np)
    theta = tr.lp.gather_params(tr.theta)
    ref = evaluate(tr.model, tr.model.layout(), theta, x, y)
    got = tr.lp.evaluate_exact(tr.theta, x, y, B)
    assert np.abs(got.grad - tr.lp.scatter_params(ref.grad)).max() <= 1e-12 * np.abs(ref.grad).max()
    assert got.objective == pytest.approx(ref.objective, rel=1e-13)
    line = iteration_line(res.history[0], "oneshot")
    assert f"monitor: grad err {first['grad_error']:.1%} (cos " in line and first["action"] in line
    # the check's serial evaluation is counted in the step applications
    assert res.history[0]["steps"] >= 2 * 32 + first["steps"]


def test_a_loose_tolerance_leaves_one_shot_alone_and_off_is_off():
    a = Trainer(TrainConfig(**PAPER, iterations=5, monitor_every=2, monitor_tol=10.0)).run()
    b = Trainer(TrainConfig(**PAPER, iterations=5, monitor_every=0)).run()
    assert [e["objective"] for e in a.history] == [e["objective"] for e in b.history]
    assert [("monitor" in e) for e in a.history] == [True, True, True, False, True]  # steps 0, 1, 2, 4
    assert not any("monitor" in e for e in b.history)
    serial = Trainer(TrainConfig(**{**PAPER, "method": "serial"}, iterations=3, monitor_every=1)).run()
    assert not any("monitor" in e for e in serial.history)  # a one-shot setting


def test_resume_with_a_cap_in_force_equals_the_uninterrupted_run(tmp_path):
    cfg = dict(PAPER, iterations=8, monitor_every=2, monitor_tol=1e-9, checkpoint_every=3)
    history = resumed_equals_uninterrupted(tmp_path, cfg, 6)
    assert any(e.get("monitor", {}).get("cap") for e in history[:6])


def test_levels_for_the_rank_count():
    """One-shot keeps at most 2 levels up to 2 layer ranks and 1 + log2(P) beyond; the cap is in the
    metrics, and --no-levels-for-ranks leaves the solver's choice alone."""
    assert [levels_for_ranks(P) for P in (1, 2, 3, 4, 8, 9, 16, 64)] == [2, 2, 3, 3, 4, 5, 5, 7]
    every = dict(iterations=4, monitor_every=0, stability=0, conv_bound=0)  # the whole hierarchy unless capped
    capped = Trainer(TrainConfig(**{**PAPER, "levels_for_ranks": True}, **every)).run()
    free = Trainer(TrainConfig(**PAPER, **every)).run()
    assert max(e["levels"] for e in capped.history) == 2 < max(e["levels"] for e in free.history)
    assert capped.metrics()["level_cap"]["levels"] == 2 and capped.metrics()["level_cap"]["layer_ranks"] == 1
    assert free.metrics()["level_cap"] is None
    assert make_method(TrainConfig(**{**PAPER, "levels_for_ranks": True}).resolved(), 16).forward.max_levels == 5
    assert make_method(TrainConfig(**{**PAPER, "levels_for_ranks": True}).resolved()).forward.max_levels == 10


def test_bad_settings_name_the_option():
    from gpubraid.errors import UserError

    for bad in (dict(monitor_every=-1), dict(monitor_tol=0.0), dict(monitor_tol=float("nan"))):
        with pytest.raises(UserError, match=next(iter(bad))):
            TrainConfig(**PAPER, **bad)
