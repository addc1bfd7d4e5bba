"""bench.group_replay: one data group's run alone, and a D-group trace with its spans scaled to it."""
import pytest

from bench.group_replay import alone_factors, compute_per_eval, group_args, scaled
from gpubraid.runtime.replay import PRESETS, replay


def test_group_args_drop_the_groups_and_take_a_share_of_the_batch():
    extra = ["--method", "serial", "--data-parallel", "4", "--micro-batches", "2"]
    assert group_args(["peaks"], extra, 1000, 4, False) == ["peaks", "--method", "serial", "--micro-batches", "2",
                                                            "--n-train", "250"]
    assert group_args(["mnist"], extra, 50, 4, True)[-2:] == ["--batch-size", "13"]


def _doc(spans_per_rank):
    """A trace whose rank r has, per iteration, the compute spans ``spans_per_rank[r][i]`` (ns)."""
    ranks = []
    for r, its in enumerate(spans_per_rank):
        events = []
        for spans in its:
            events += [["c", ns, ns] for ns in spans] + [["m", "iteration"]]
        ranks.append({"rank": r, "groups": [[r]], "events": events})
    return {"format": "gpubraid-trace", "version": 2, "clock": "thread", "meta": {}, "ranks": ranks}


def test_compute_per_eval_leaves_the_first_iteration_out_and_counts_evaluations():
    doc = _doc([[[900], [100, 100], [300]], [[5], [50], [150]]])
    metrics = {"history": [{"n_evals": 1}, {"n_evals": 2}, {"n_evals": 1}]}
    assert compute_per_eval(doc, metrics) == pytest.approx([500e-9 / 3, 200e-9 / 3])


def test_scaled_spans_replay_proportionally():
    doc = _doc([[[1000], [2000], [3000]]])
    half = scaled(doc, [0.5])
    assert [e[1] for e in half["ranks"][0]["events"] if e[0] == "c"] == [500, 1000, 1500]
    assert [e[1] for e in doc["ranks"][0]["events"] if e[0] == "c"] == [1000, 2000, 3000]  # not changed
    assert replay(half, PRESETS["ideal"]).wall_s == pytest.approx(replay(doc, PRESETS["ideal"]).wall_s / 2)


def test_alone_factors_of_two_data_groups(mpirun, tmp_path):
    """Two groups of one rank: the traced run, then one group alone on half the samples; a factor
    per rank, near 1 where nobody took turns (2 ranks on at least 2 cores: any positive value is
    accepted, the machine may be loaded)."""
    from bench.common import train_cli
    from gpubraid.runtime.trace import load

    base, extra = ["peaks", "--layers", "8", "--n-train", "200"], ["--method", "serial", "--data-parallel", "2",
                                                                   "--iterations", "4", "--val-every", "0"]
    m = train_cli(2, base + extra, str(tmp_path), True)
    doc = load(str(tmp_path / "t.json"))
    factors = alone_factors(doc, m, base, extra, 200, 2, str(tmp_path))
    assert len(factors) == 2 and all(f > 0 for f in factors)
