"""The ρ estimate held between steps (``estimate_every``): estimated at the first evaluation of every
K-th step, the levels of the steps between taken from it, an exact resume in the middle of a hold,
and the defaults (every evaluation with the full batch, every 10 steps on mini-batches)."""
import pytest

from gpubraid.errors import UserError
from gpubraid.training.config import MINIBATCH_ESTIMATE_EVERY, TrainConfig
from gpubraid.training.trainer import Trainer

#: One-shot on mini-batches of 8, where ρ varies from batch to batch and the level choice with it
#: (conv_bound is near at 32 layers and m = 8).
MINI = dict(example="peaks", layers=32, final_time=1.0, activation="smoothrelu", n_train=200, n_val=50,
            val_every=0, progress=False, method="oneshot", levels_for_ranks=False, optimizer="adam", lr=0.01,
            batch_size=8, cfactor=8, monitor_every=0)


def _strip(history):
    return [{k: v for k, v in e.items() if k != "time_s"} for e in history]


def test_held_estimate_chooses_the_levels_of_its_rho():
    K = 3
    tr = Trainer(TrainConfig(**MINI, iterations=9, estimate_every=K))
    held = tr.run().history
    fresh = Trainer(TrainConfig(**MINI, iterations=9, estimate_every=1)).run().history
    for e in held:
        first = held[e["iter"] - e["iter"] % K]
        assert e["rho"] == first["rho"]
        assert e.get("rho_reused", False) == (e["iter"] % K != 0)
        assert e["levels"] == tr.lp.fwd.choose_levels(e["rho"])[0]
    assert held[0] == {**fresh[0], "time_s": held[0]["time_s"]}
    assert not any(e.get("rho_reused") for e in fresh)
    assert len({e["rho"] for e in fresh}) == len(fresh)  # every step estimates, on its own batch
    # a held step makes no estimate: fewer step applications than the step that estimated, where
    # both kept the same levels (the estimate: 5 calls of the layers on a quarter of the batch)
    same = [e for e in held if e["iter"] % K and e["levels"] == held[e["iter"] - e["iter"] % K]["levels"]]
    assert same and all(e["steps"] < held[e["iter"] - e["iter"] % K]["steps"] for e in same)


def test_resume_inside_a_hold_equals_the_uninterrupted_run(tmp_path):
    cfg = dict(MINI, iterations=8, estimate_every=3, checkpoint_every=4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref = Trainer(TrainConfig(**cfg, checkpoint_dir=str(tmp_path / "a"))).run()
    Trainer(TrainConfig(**{**cfg, "iterations": 4}, checkpoint_dir=str(tmp_path / "b"))).run()
    got = Trainer(TrainConfig(**cfg, checkpoint_dir=str(tmp_path / "b"), resume=str(tmp_path / "b"))).run()
    assert _strip(got.history) == _strip(ref.history)
    assert ref.history[4].get("rho_reused") and ref.history[5].get("rho_reused")


def test_defaults_and_bad_values():
    mini = Trainer(TrainConfig(**MINI, iterations=1))
    full = Trainer(TrainConfig(**{**MINI, "batch_size": 0, "optimizer": "lbfgs"}, iterations=1))
    assert (mini.lp.estimate_every, full.lp.estimate_every) == (MINIBATCH_ESTIMATE_EVERY, 1)
    for bad in (0, -2, 1.5, "often"):
        with pytest.raises(UserError, match="estimate_every"):
            TrainConfig(**MINI, estimate_every=bad)
