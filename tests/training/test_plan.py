"""The planner: step counts as the solver runs them, the pipeline simulation by hand, the candidate
list, the probe, and --method auto (resolved before the method is made, recorded in the metrics)."""
import dataclasses
import json
import math

import numpy as np
import pytest

from gpubraid.objective.layer_parallel import LayerParallel
from gpubraid.runtime.comm import Comm
from gpubraid.runtime.replay import PRESETS, NetworkModel
from gpubraid.solver.options import MGRITOptions
from gpubraid.training import costmodel as cm
from gpubraid.training import plan
from gpubraid.training.config import TrainConfig
from gpubraid.training.methods import make_method
from gpubraid.training.probe import Probe
from gpubraid.training.trainer import Trainer

IDEAL = PRESETS["ideal"]
SMALL = dict(example="peaks", layers=16, n_train=200, n_val=50, iterations=3, progress=False, val_every=0)


@pytest.mark.parametrize("levels,warm", [(2, True), (3, False), (4, True)])
def test_mgrit_calls_count_the_steps_the_solver_takes(levels, warm):
    cfg = TrainConfig(**SMALL, method="oneshot", stability=0, conv_bound=0, max_levels=levels).resolved()
    tr = Trainer(plan.probe_config(cfg))
    m = make_method(cfg)
    lp = LayerParallel(tr.model, Comm.single(), m.forward, m.adjoint, None, m.pipeline)
    x, y, B = tr.data.take("train", None, np)
    lp.evaluate(tr.theta, x, y, B, grad=True)
    if warm:
        lp.evaluate(tr.theta, x, y, B, grad=True, warm=True)
    f, b = lp.last_stats
    counted = cm.mgrit_calls(m.forward, m.adjoint, tr.model.h, 1, f.levels, warm, f.iterations, b.iterations)
    assert f.levels == levels
    assert counted["forward"][1] == sum(f.steps_per_level) + f.coarse_steps
    assert counted["adjoint"][1] == sum(b.steps_per_level) + b.coarse_steps
    assert (counted["forward"][2], counted["adjoint"][2]) == (f.coarse_steps, b.coarse_steps)
    assert counted["forward"][0] < counted["forward"][1]   # batched calls: fewer calls than steps


def test_pipeline_simulation_by_hand():
    # one layer per rank, unit costs, free messages: 1F1B over 2 ranks and 2 micro-batches takes
    # (M + L - 1) block times per direction: 6
    assert cm.pipeline_s("1f1b", 2, 2, 2, 2, (1.0, 0.0), (1.0, 0.0), (0.0, 0.0), 8, IDEAL) == 6.0
    assert cm.pipeline_s("gpipe", 2, 2, 2, 2, (1.0, 0.0), (1.0, 0.0), (0.0, 0.0), 8, IDEAL) == 6.0
    # Chimera: one micro-batch each way, no idle ends: each rank's 2 forwards and 2 backwards; on 4
    # ranks and 8 micro-batches 18 against 1F1B's 22 (the 16 steps of each rank's work + the bubble)
    assert cm.pipeline_s("chimera", 2, 2, 2, 2, (1.0, 0.0), (1.0, 0.0), (0.0, 0.0), 8, IDEAL) == 4.0
    assert cm.pipeline_s("chimera", 4, 8, 8, 4, (1.0, 0.0), (1.0, 0.0), (0.0, 0.0), 8, IDEAL) == 18.0
    assert cm.pipeline_s("1f1b", 4, 8, 8, 4, (1.0, 0.0), (1.0, 0.0), (0.0, 0.0), 8, IDEAL) == 22.0
    # one rank, one micro-batch: N layers forward and backward plus the ends, per sample
    assert cm.pipeline_s("1f1b", 1, 1, 10, 4, (0.5, 0.1), (0.25, 0.2), (1.0, 0.01), 8, IDEAL) == \
        pytest.approx(4 * (0.5 + 1.0) + 4 * (0.25 + 2.0) + 1.0 + 0.1)
    # a sweep call's own cost comes once per micro-batch step, not once per layer
    assert cm.pipeline_s("1f1b", 1, 1, 10, 4, (0.5, 0.1), (0.25, 0.2), (1.0, 0.01), 8, IDEAL, call=(3.0, 2.0)) == \
        pytest.approx(3.0 + 4 * (0.5 + 1.0) + 2.0 + 4 * (0.25 + 2.0) + 1.0 + 0.1)
    assert cm.pipeline_s("1f1b", 2, 2, 2, 2, (1.0, 0.0), (1.0, 0.0), (0.0, 0.0), 8, IDEAL, call=(1.0, 1.0)) == 12.0
    # a message of n bytes between the two ranks adds α + n/β + o per hop on the critical path
    net = NetworkModel("t", 1.0, 8.0, 0.5)
    t = cm.pipeline_s("gpipe", 2, 1, 1, 2, (1.0, 0.0), (1.0, 0.0), (0.0, 0.0), 8, net)
    assert t == pytest.approx(4.0 + 2 * (1.0 + 1.0 + 0.5))
    # Chimera on 2 ranks: each direction's state and adjoint hop
    t = cm.pipeline_s("chimera", 2, 2, 2, 2, (1.0, 0.0), (1.0, 0.0), (0.0, 0.0), 8, net)
    assert t == pytest.approx(4.0 + 2 * (1.0 + 1.0 + 0.5))


def fake_probe(levels=1, grad_error=0.0, per_sample=1e-6, per_call=1e-5) -> Probe:
    one = (per_call, per_sample)
    return Probe(batch=1000, layers=16, state_bytes=64, param_bytes=576, warm=True, clock="cpu",
                 sweep_fwd=one, sweep_bwd=one, ends=(0.0, per_sample),
                 calls={k: (per_call, 0.0, per_sample) for k in ("forward", "adjoint", "param_grad")},
                 solve_call=(0.0, 0.0),
                 oneshot={"levels": levels, "rho": 1.0, "grad_error": grad_error, "iterations": [1, 1]},
                 exact={"levels": 3, "rho": 1.0, "iterations": [5, 5]})


def test_candidates_cover_every_split_best_first():
    cfg = TrainConfig(**SMALL).resolved()
    h = (1.0 / 16,) * 16
    cands = plan.candidates(fake_probe(), cfg, 8, IDEAL, h)
    assert {(c.D, c.L) for c in cands} == {(1, 8), (2, 4), (4, 2), (8, 1)}
    assert cands == sorted(cands, key=plan.rank_key)
    ranked = [c.accuracy_s * (1 + plan.CHIMERA_MARGIN if c.schedule == "chimera" else 1) for c in cands]
    assert ranked == sorted(ranked)
    assert {c.method for c in cands} == {"serial", "pipeline", "oneshot", "exact"}
    assert {c.M for c in cands if c.method == "serial"} == {1, 2, 4, 8}
    # per-sample work and a free network: data groups divide it best
    assert (cands[0].D, cands[0].L) == (8, 1)
    assert cands[0].settings() == {"method": "serial", "data_parallel": 8, "micro_batches": 1}
    pipe = next(c for c in cands if c.method == "pipeline" and c.schedule == "1f1b")
    assert pipe.settings() == {"method": "pipeline", "data_parallel": pipe.D, "micro_batches": pipe.M}
    # Chimera on the even layer-rank counts, run with its schedule
    assert {c.L for c in cands if c.schedule == "chimera"} == {2, 4, 8}
    chimera = next(c for c in cands if c.schedule == "chimera")
    assert chimera.settings() == {"method": "pipeline", "data_parallel": chimera.D, "micro_batches": chimera.M,
                                  "schedule": "chimera"} and "chimera" in chimera.label()


def test_oneshot_priced_at_every_level_count_up_to_its_cap():
    """One-shot is a candidate at 2 .. min(the probe's levels, levels_for_ranks(L)) levels, and runs
    with the levels it was priced at; with a step cheap against a phase's calls, fewer levels win."""
    cfg = TrainConfig(**SMALL).resolved()
    h = (1.0 / 16,) * 16
    probe = fake_probe(levels=4, per_sample=1e-9)
    probe.calls |= {f"{op}_chain": (1e-5, 0.0, 1e-9) for op in ("forward", "adjoint")}   # the coarsest solve: one call
    cands = [c for c in plan.candidates(probe, cfg, 8, IDEAL, h) if c.method == "oneshot"]
    levels = {}
    for c in cands:
        levels.setdefault((c.D, c.L), set()).add(c.levels)
    assert levels == {(1, 8): {2, 3, 4}, (2, 4): {2, 3}, (4, 2): {2}, (8, 1): {2}}
    assert all(c.settings() == {"method": "oneshot", "data_parallel": c.D, "max_levels": c.levels} for c in cands)
    on_8 = sorted((c for c in cands if c.L == 8), key=lambda c: c.step_s)
    assert on_8[0].levels == 2 and len({c.grad_error for c in cands}) == 1


def test_what_the_user_fixed_is_kept():
    """--data-parallel D (other than 1), --micro-batches M and --schedule (other than 1f1b) restrict
    auto's candidates: only D data groups, the layer-serial ones (serial, the pipeline, one-level
    one-shot) with M micro-batches, the pipeline with that schedule."""
    cfg = TrainConfig(**SMALL).resolved()
    h = (1.0 / 16,) * 16
    assert plan.fixed_by(cfg) == {}
    fixed = plan.fixed_by(cfg.model_copy(update={"data_parallel": 2, "micro_batches": 3}))
    assert fixed == {"data_parallel": 2, "micro_batches": 3}
    cands = plan.candidates(fake_probe(), cfg, 8, IDEAL, h, fixed)
    assert {(c.D, c.L) for c in cands} == {(2, 4)}
    assert {c.M for c in cands if c.method in ("pipeline", "oneshot")} == {3}
    assert {c.method for c in cands} == {"pipeline", "oneshot", "exact"}
    # a schedule other than 1F1B is the run's own: GPipe priced as 1F1B, Chimera alone
    for schedule, priced in (("gpipe", {"1f1b"}), ("chimera", {"chimera"})):
        fixed = plan.fixed_by(cfg.model_copy(update={"schedule": schedule}))
        assert fixed == {"schedule": schedule}
        cands = plan.candidates(fake_probe(), cfg, 8, IDEAL, h, fixed)
        assert {c.schedule for c in cands if c.method == "pipeline"} == priced


def test_auto_keeps_the_fixed_settings_and_says_so():
    from gpubraid.errors import UserError

    tr = Trainer(TrainConfig(**SMALL, method="auto", micro_batches=3, schedule="gpipe"))
    assert tr.plan["fixed"] == {"micro_batches": 3, "schedule": "gpipe"}
    assert "as you fixed --schedule gpipe, --micro-batches 3" in tr.plan["line"]
    assert tr.cfg.micro_batches == 3 and tr.cfg.schedule == "gpipe"   # the run's schedule is kept too
    with pytest.raises(UserError, match="data_parallel must divide the number of MPI ranks"):
        Trainer(TrainConfig(**SMALL, method="auto", data_parallel=2))


def test_the_convergence_monitor_is_priced_into_one_shot_steps():
    """Checks at steps 0, 1, 2, 4, 8, 10, 20, 40, 80 and every 80th after (a run whose error stays
    small): 20 in 1000 steps; each costs one evaluation of the pipeline at one-shot's split, on
    one-shot's steps only."""
    assert plan.monitor_share(10, 1000) == pytest.approx(0.02)
    assert plan.monitor_share(10, 1000, small=False) == pytest.approx(0.104)   # every 10th, and 1, 2, 4, 8
    assert plan.monitor_share(10, 10) == pytest.approx(0.5)
    assert plan.monitor_share(0, 1000) == 0.0
    h = (1.0 / 16,) * 16
    priced = {}
    for every in (0, 10):
        cfg = TrainConfig(**SMALL, monitor_every=every).resolved()
        priced[every] = {(c.D, c.L, c.method, c.levels, c.M, c.schedule): c.step_s
                         for c in plan.candidates(fake_probe(levels=3), cfg, 4, IDEAL, h)}
    extra = {k: priced[10][k] - t for k, t in priced[0].items()}
    assert all(d > 0 for k, d in extra.items() if k[2] == "oneshot" and k[3] > 1)
    assert all(d == 0 for k, d in extra.items() if k[2] != "oneshot")
    # the same check at every level count of a split, at most a share of the pipeline's whole step there
    two, three = extra[(1, 4, "oneshot", 2, 1, "1f1b")], extra[(1, 4, "oneshot", 3, 1, "1f1b")]
    pipe = max(t for k, t in priced[0].items() if k[:3] == (1, 4, "pipeline") and k[5] == "1f1b")
    assert two == pytest.approx(three) and 0 < two <= plan.monitor_share(10, SMALL["iterations"]) * pipe


def test_overheads_that_grow_with_the_layers_are_priced_for_a_ranks_block():
    """The solver's cost per call and the step's beyond its evaluation, probed on the network and on a
    16th of it, are linear in the layers a rank holds between the two (the smaller's below it); a
    deep network's probe carries the smaller one's, and a candidate on more layer ranks pays less."""
    p = fake_probe()
    p.layers, p.step_overhead, p.solve_call = 256, 0.01, (1e-4, 2e-7)
    assert p.at_block(16) == ((1e-4, 2e-7), 0.01)               # no smaller probe: its own
    p.block = (16, (4e-5, 1e-7), 0.001)
    assert p.at_block(16) == ((4e-5, 1e-7), 0.001) and p.at_block(8) == p.at_block(16)
    assert p.at_block(256) == ((1e-4, 2e-7), 0.01)
    (a, b), over = p.at_block(136)
    assert (a, b, over) == pytest.approx((7e-5, 1.5e-7, 0.0055))
    probe, cfg, h = plan.probe_job(TrainConfig(**{**SMALL, "layers": 256}), lambda c: Trainer(c, Comm.single()))
    n, call, over = probe.block
    assert n == 256 // plan.BLOCK_SHARE and 0 < over < probe.step_overhead
    cands = plan.candidates(probe, cfg, 16, IDEAL, h)
    flat = plan.candidates(dataclasses.replace(probe, block=(0, (0.0, 0.0), 0.0)), cfg, 16, IDEAL, h)
    key = {(c.D, c.L, c.method, c.M, c.levels): c.step_s for c in flat}
    on_16 = [c for c in cands if c.L == 16 and c.method == "pipeline"]
    assert on_16 and all(c.step_s < key[(c.D, c.L, c.method, c.M, c.levels)] for c in on_16)


def test_time_to_accuracy_prices_the_one_shot_gradient_error():
    cfg = TrainConfig(**SMALL).resolved()
    h = (1.0 / 16,) * 16
    for e in (0.0, 0.5):
        os_ = [c for c in plan.candidates(fake_probe(levels=3, grad_error=e), cfg, 2, IDEAL, h) if c.method == "oneshot"]
        assert os_ and all(c.accuracy_s == pytest.approx(cfg.iterations * c.step_s / (1 - e)) for c in os_)
    bad = plan.candidates(fake_probe(levels=3, grad_error=1.5), cfg, 2, IDEAL, h)
    assert all(math.isinf(c.accuracy_s) for c in bad if c.method == "oneshot")
    assert bad[0].method != "oneshot"


def test_probe_of_a_small_network():
    cfg = TrainConfig(**SMALL).resolved()
    made = plan.make_plan(cfg, 4, plan.SHARED_MEMORY, lambda c: Trainer(c, Comm.single()))
    p = made.probe
    assert p.batch == 200 and p.layers == 16 and p.state_bytes == 8 * 8
    assert all(a >= 0 and b >= 0 for a, b in (p.sweep_fwd, p.sweep_bwd, p.ends, p.sweep_call))
    # α + L·(a + b·m) per batched call; the dense step's chains (the coarsest solve) are fitted too
    assert set(p.calls) == {"forward", "adjoint", "param_grad", "forward_chain", "adjoint_chain"}
    assert all(len(c) == 3 and min(c) >= 0 and sum(c) > 0 for c in p.calls.values())
    # the ρ estimate of a one-shot solve that chooses its levels: its calls and its work per layer
    fwd = plan.cfg_method(cfg, "oneshot").forward
    assert fwd.stability > 0 and p.estimate[0] == (fwd.stability_iters + 1) * p.calls["forward"][0]
    assert p.estimate[1] >= 0
    assert sum(p.sweep_fwd) > 0 and sum(p.sweep_bwd) > 0 and p.evaluate_s > 0
    # sweeps of 16 layers at 16 and 25 samples fitted; at the batch (200), a footprint point
    cells = [c for c, _, _ in p.footprint]
    assert cells == [16 * 25, 16 * 200] and p.footprint[0][1:] == (1.0, 1.0)
    assert all(r >= 1.0 for _, *rs in p.footprint for r in rs)
    if p.oneshot["levels"] == 1:   # the layer-serial sweep: serial's gradient
        assert p.oneshot["grad_error"] < 1e-12
    assert {(c.D, c.L) for c in made.candidates} == {(1, 4), (2, 2), (4, 1)}
    assert made.best is made.candidates[0]
    assert "plan: " in made.line() and made.table().count("\n") >= len(made.candidates) + 2


def test_probe_fits_wide_states_at_sizes_that_stay_in_the_caches():
    """MNIST's 8 × 28 × 28 maps hold 17 × 50 kB per sample over the probe's 8 layers: the per-sample fit
    comes from 2 and 9 samples (at most HELD_BYTES), 16 and the batch of 50 are footprint points, so
    a micro-batch count whose micro-batches spill is seen to cost more per sample."""
    from gpubraid.runtime.resources import HELD_BYTES

    cfg = TrainConfig(example="mnist", layers=8, n_train=100, n_val=50, iterations=3, progress=False,
                      val_every=0).resolved()
    p = plan.make_plan(cfg, 1, plan.SHARED_MEMORY, lambda c: Trainer(c, Comm.single())).probe
    assert p.batch == 50 and p.state_bytes == 8 * 28 * 28 * 8
    assert HELD_BYTES // (17 * p.state_bytes) == 9
    assert [c for c, _, _ in p.footprint] == [8 * 9, 8 * 16, 8 * 50] and p.footprint[0][1:] == (1.0, 1.0)


def test_sweep_sizes_fit_in_the_caches():
    from gpubraid.training.probe import sweep_sizes

    assert sweep_sizes(5000, 3971) == [16, 625, 5000]            # peaks: as before the in-cache rule
    assert sweep_sizes(5000, 5000) == [16, 625, 5000]            # not cache-blocked (in_cache = B)
    assert sweep_sizes(50, 5) == [1, 5, 6, 16, 50]               # MNIST's maps over 16 layers
    assert sweep_sizes(50000, 3971) == [16, 3971, 6250, 50000]   # an eighth of the batch would spill
    assert sweep_sizes(5000, 16) == [4, 16, 625, 5000]
    for B in range(1, 120):
        for in_cache in range(1, B + 1):
            sizes = sweep_sizes(B, in_cache)
            assert sizes == sorted(set(sizes)) and sizes[-1] == B and sizes[0] >= 1
            assert all(m <= in_cache for m in sizes[:2]) or in_cache == 1 or len(sizes) == 1


def test_step_overhead_is_measured_not_what_a_slower_evaluation_leaves():
    """The probe's per-step overhead is each step's time less its own evaluation's: evaluations that
    take 30 ms more CPU time than the probe's sweeps predicted (a machine slower by then) leave it
    small, where "step less predicted evaluation" would carry the 30 ms into every candidate."""
    import time

    from gpubraid.training.probe import run_probe

    cfg = TrainConfig(**SMALL).resolved()
    trainer = Trainer(plan.probe_config(cfg), Comm.single())
    evaluate = trainer.lp.evaluate

    def slower(*args, **kwargs):
        t = time.process_time() + 0.03
        while time.process_time() < t:
            pass
        return evaluate(*args, **kwargs)

    trainer.lp.evaluate = slower
    p = run_probe(trainer, plan.cfg_method(cfg, "oneshot"), plan.cfg_method(cfg, "exact"))
    assert trainer.lp.evaluate is slower            # put back as it was
    assert p.evaluate_s < 0.03 and p.step_overhead < 0.01


def test_probe_gradient_error_of_a_multilevel_one_shot():
    cfg = TrainConfig(**SMALL, stability=0, conv_bound=0, max_levels=3, levels_for_ranks=False).resolved()
    made = plan.make_plan(cfg, 2, IDEAL, lambda c: Trainer(c, Comm.single()))
    os_ = made.probe.oneshot
    assert os_["levels"] == 3 and 0 < os_["grad_error"] < 1
    assert any(c.method == "oneshot" and c.levels == 3 for c in made.candidates)
    # with the cap for the rank count, candidates on up to 2 layer ranks keep 2 levels, on 4 two or three
    capped = plan.candidates(made.probe, cfg.model_copy(update={"levels_for_ranks": True}), 4, IDEAL,
                             (1.0 / 16,) * 16)
    assert {(c.L, c.levels) for c in capped if c.method == "oneshot"} == {(1, 2), (2, 2), (4, 2), (4, 3)}


def test_auto_trains_with_the_plans_choice_and_records_it(tmp_path):
    from gpubraid.training.report import write_metrics

    tr = Trainer(TrainConfig(**SMALL, method="auto"))
    assert tr.cfg.method in ("serial", "oneshot") and tr.cfg.data_parallel == 1
    assert tr.plan["choice"]["method"] == tr.cfg.method and tr.plan["line"].startswith("plan: ")
    res = tr.run()
    write_metrics(str(tmp_path / "m.json"), res)
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["method"] == tr.cfg.method and m["plan"]["why"] and m["plan"]["candidates"]
    # the same bits as the chosen method run directly
    direct = Trainer(TrainConfig(**{**SMALL, **plan.Candidate(**tr.plan["choice"]).settings()})).run()
    assert [h["objective"] for h in direct.history] == [h["objective"] for h in res.history]


def test_make_method_refuses_an_unresolved_auto():
    with pytest.raises(AssertionError):
        make_method(TrainConfig(**SMALL, method="auto").resolved())


def test_bad_network_and_ranks_are_one_line_errors():
    from gpubraid.errors import UserError

    with pytest.raises(UserError, match="network"):
        plan.network("no-such-network")
    assert plan.network("ib") is PRESETS["ib"]
    with pytest.raises(UserError, match="ranks"):
        plan.make_plan(TrainConfig(**SMALL).resolved(), 0, IDEAL, lambda c: Trainer(c, Comm.single()))


def test_mgrit_options_are_read_not_changed():
    opts = MGRITOptions(cfactor=2, max_levels=3, nrelax=[0, 1], tol=0.0, max_iter=1)
    before = repr(opts)
    cm.mgrit_calls(opts, opts, [0.1] * 16, 2, 3, True, 1, 1)
    assert repr(opts) == before


def test_per_sample_scale_between_the_footprint_points():
    p = fake_probe()
    assert p.per_sample_scale(10 ** 9, True) == 1.0  # no points: the fit everywhere
    p.footprint = ((100, 1.0, 1.0), (10000, 2.0, 3.0))
    assert p.per_sample_scale(50, False) == 1.0 and p.per_sample_scale(10 ** 6, True) == 3.0
    assert p.per_sample_scale(1000, False) == pytest.approx(1.5)
    assert p.per_sample_scale(1000, True) == pytest.approx(2.0)
    p.footprint = ((100, 1.0, 1.0), (1000, 3.0, 2.0), (100000, 4.0, 2.0))
    assert p.per_sample_scale(1000, False) == pytest.approx(3.0)
    assert p.per_sample_scale(10000, False) == pytest.approx(3.5)
    assert p.per_sample_scale(10000, True) == pytest.approx(2.0)


def test_micro_batches_on_one_layer_rank_priced_by_their_footprint():
    """On one layer rank the candidates include micro-batches one after the other (serial M > 1,
    run as ``micro_batches=M``): with per-sample costs that grow with the states held, fewer
    samples at a time win; with flat costs M = 1 wins (each micro-batch pays the calls again)."""
    cfg = TrainConfig(**SMALL).resolved()
    h = (1.0 / 16,) * 16
    p = fake_probe()
    serial = [c for c in plan.candidates(p, cfg, 1, IDEAL, h) if c.method == "serial"]
    assert [c.M for c in serial] == [1, 2, 4, 8] and serial[0].settings() == {"method": "serial", "data_parallel": 1,
                                                                         "micro_batches": 1}
    p.footprint = ((16 * 100, 1.0, 1.0), (16 * 1000, 3.0, 3.0))
    serial = [c for c in plan.candidates(p, cfg, 1, IDEAL, h) if c.method == "serial"]
    assert serial[0].M == 8 and serial[0].label() == "serial M=8 on 1x1 (data x layer)"
    assert serial[0].settings() == {"method": "serial", "data_parallel": 1, "micro_batches": 8}
    # a cache-blocked step's automatic M (what a run without --micro-batches streams) is priced too
    p.cache_blocked, p.state_bytes = True, 64 * 64
    auto = -(-1000 * 33 * 64 * 64 // (8 << 20))
    assert auto == 17 and {c.M for c in plan.candidates(p, cfg, 1, IDEAL, h) if c.method == "serial"} == {1, 2, 4, 8, 17}


def test_coarsest_solve_steps_cost_the_step_call_only():
    """The coarsest solve's single-step calls are priced at the step's own α, not the solver's
    per-call overhead: a long coarsest level (2 levels, nested start) costs that overhead only on
    the other calls (it once priced one-shot on 1024 layers at 15x its measured time)."""
    opts = MGRITOptions(cfactor=2, max_levels=2, nrelax=0, tol=0.0, max_iter=1, nested=True)
    h = (0.1,) * 64
    args = (opts, h, 1, 2, False, 1)
    plain = cm.mgrit_solve_s(*args, 1.0, 0.0, 1, 0.0, 0.0, IDEAL, 8)
    cheap = cm.mgrit_solve_s(*args, 1.0, 0.0, 1, 0.0, 0.0, IDEAL, 8, coarse_alpha=0.25)
    coarse = cm.mgrit_calls(opts, opts, h, 1, 2, False, 1, 1)["forward"][2]
    assert coarse == 2 * 32   # the nested start's coarsest solve and the iteration's
    assert plain - cheap == pytest.approx(coarse * 0.75)


def test_chained_coarsest_solve_is_one_call():
    """With a chain the coarsest solve is one call (α + β·N_L·m at the chain's costs), as
    :func:`gpubraid.solver.coarse.coarse_solve` runs it; the other calls are counted as before."""
    opts = MGRITOptions(cfactor=2, max_levels=2, nrelax=0, tol=0.0, max_iter=1, nested=True)
    h = (0.1,) * 64
    per_step = cm.mgrit_calls(opts, opts, h, 1, 2, False, 1, 1)["forward"]
    chained = cm.mgrit_calls(opts, opts, h, 1, 2, False, 1, 1, chain=True)["forward"]
    assert (per_step.coarse_calls, chained.coarse_calls) == (2 * 32, 2)   # the nested start's and the iteration's
    assert per_step.calls - per_step.coarse_calls == chained.calls - chained.coarse_calls
    assert chained.coarse == per_step.coarse == 2 * 32 and chained.steps == per_step.steps
    args = (opts, h, 1, 2, False, 1, 1.0, 0.0, 3, 0.0, 0.0, IDEAL, 8)
    plain = cm.mgrit_solve_s(*args)
    chain = cm.mgrit_solve_s(*args, chain=(5.0, 0.0, 0.5))
    assert plain - chain == pytest.approx(2 * 32 * 1.0 - 2 * (5.0 + 0.5 * 32 * 3))


@pytest.mark.parametrize("spatial", [0, 1, 2])
def test_levels_on_halved_maps_cost_a_quarter_per_halving(spatial):
    """With only β (one rank, one sample, no messages) a solve costs its step applications, those on
    a level that halves the maps l times weighted by 4^−l: what mgrit_calls counts as work."""
    opts = MGRITOptions(cfactor=2, max_levels=3, nrelax=0, tol=0.0, max_iter=1, nested=True,
                        spatial_levels=spatial)
    h = (0.1,) * 32
    cost = cm.mgrit_solve_s(opts, h, 1, 3, False, 1, 0.0, 1.0, 1, 0.0, 0.0, IDEAL, 8)
    c = cm.mgrit_calls(opts, opts, h, 1, 3, False, 1, 1)["forward"]
    assert cost == pytest.approx(c.work)
    assert (c.work == c.steps) == (spatial == 0) and c.work <= c.steps
    assert c.coarse_work == pytest.approx(c.coarse * 0.25 ** min(2, spatial))


def test_call_fit_separates_the_call_the_layer_and_the_sample():
    """α + L·(a + b·m) recovered from exact timings at the probe's points, and a term that the
    timings do not support left at 0 rather than negative."""
    from gpubraid.training.fits import fit_calls
    points = [(1, 1), (1, 8), (8, 1), (8, 8)]
    fit = fit_calls(points, [20e-6 + L * (1e-6 + 2e-8 * m) for L, m in points])
    assert fit == pytest.approx((20e-6, 1e-6, 2e-8), rel=1e-6)
    fit = fit_calls(points, [20e-6 + L * m * 3e-8 for L, m in points])
    assert fit[1] == 0.0 and fit[0] == pytest.approx(20e-6) and fit[2] == pytest.approx(3e-8)
    assert min(fit_calls(points, [5e-6, 4e-6, 4.5e-6, 5e-6])) >= 0.0   # noise only


def test_chimera_ranks_with_its_margin():
    """A Chimera candidate is ranked as if CHIMERA_MARGIN slower than predicted (its predicted times stay)."""
    data = plan.Candidate(8, 1, "serial", 1, 1, 1.0, 100.0)
    near = plan.Candidate(4, 2, "pipeline", 1, 2, 0.95, 95.0, schedule="chimera")
    far = plan.Candidate(4, 2, "pipeline", 1, 2, 0.8, 80.0, schedule="chimera")
    assert sorted([near, data], key=plan.rank_key) == [data, near]
    assert sorted([data, far], key=plan.rank_key) == [far, data]
    assert near.step_s == 0.95 and near.accuracy_s == 95.0
