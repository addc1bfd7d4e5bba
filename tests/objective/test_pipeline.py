"""Pipeline-parallel training: micro-batches streamed through the layer ranks give serial's gradient."""

import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.network.network import ResNetODE
from gpubraid.network.reference import evaluate
from gpubraid.objective.layer_parallel import LayerParallel
from gpubraid.objective.pipeline import SCHEDULES, PipelineOptions, schedule_order
from gpubraid.runtime import resources
from gpubraid.runtime.backend import resolve_backend
from gpubraid.solver.options import MGRITOptions
from gpubraid.training.config import TrainConfig
from gpubraid.training.methods import Pipelined, make_method
from gpubraid.training.trainer import Trainer

ONE = MGRITOptions(max_levels=1)


def held(order):
    """Most micro-batches whose states a rank holds at once under ``order``."""
    live, most = set(), 0
    for kind, k in order:
        (live.add if kind == "F" else live.remove)(k)
        most = max(most, len(live))
    return most


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_every_micro_batch_goes_forward_then_backward_once(schedule):
    for P in range(1, 6):
        for r in range(P):
            for M in (1, 2, 3, 8):
                order = schedule_order(schedule, M, P, r)
                assert sorted(order) == sorted([("F", k) for k in range(M)] + [("B", k) for k in range(M)])
                assert [k for kind, k in order if kind == "B"] == list(range(M))
                assert all(order.index(("F", k)) < order.index(("B", k)) for k in range(M))
                assert held(order) == (M if schedule == "gpipe" else min(P - r, M))


def test_micro_batches_cover_the_batch_and_the_automatic_count():
    bounds = resources.micro_batch_bounds
    assert list(bounds(10, 3)) == [0, 4, 7, 10]
    assert list(bounds(10, 3, ranks=4)) == [0, 4, 7, 10]          # M < P: no steady state to gain
    assert np.diff(bounds(5000, 8, 2)).tolist() == [625] * 8      # two ranks: as fast either way
    assert np.diff(bounds(5000, 8, 8)).tolist() == [625] * 8      # M = P
    assert np.diff(bounds(5000, 8, 4, "gpipe")).tolist() == [625] * 8
    assert np.diff(bounds(31, 8, 4)).tolist() == [4] * 7 + [3]    # fewer than 4 samples would be left
    assert np.diff(bounds(5000, 8, 4)).tolist() == [370, 555, 741, 741, 741, 741, 741, 370]
    for batch in range(1, 200):
        for M in range(1, min(batch, 20) + 1):
            for P in (1, 2, 4, 8):
                cut = bounds(batch, M, P)
                assert len(cut) == M + 1 and cut[0] == 0 and cut[-1] == batch and np.diff(cut).min() >= 1
    assert resources.micro_batch_count(None, 1, 100) == 1
    assert resources.micro_batch_count(None, 2, 100) == 8
    assert resources.micro_batch_count(16, 2, 5) == 5


def test_the_automatic_count_keeps_a_micro_batch_in_the_caches():
    """By default a cache-blocked step's micro-batch holds at most HELD_BYTES between its forward and
    backward sweep when the whole batch would hold more than CUT_ABOVE (peaks at 256 layers on one
    rank: 513 rows of 8 float64 a sample, 20 micro-batches of 5000; one more on four ranks, where the
    ends are smaller and the middle ones larger); never fewer than the per-rank
    count, and a requested M is kept as it is."""
    sample = resources.held_bytes(256, 64, True)
    assert sample == 513 * 64 and resources.held_bytes(256, 64, False) == 0
    assert resources.micro_batch_count(None, 1, 5000, sample) == 20 == -(-5000 * sample // resources.HELD_BYTES)
    held = resources.held_bytes(128, 64, True)
    assert resources.micro_batch_count(None, 2, 5000, held) == 10
    M = resources.micro_batch_count(None, 4, 5000, resources.held_bytes(256, 64, True))
    largest = np.diff(resources.micro_batch_bounds(5000, M, 4)).max()
    assert M == 21 and largest * (2 * 256 + 1) * 64 <= resources.HELD_BYTES
    for batch in (5000, 7919, 20000):
        for layers in (64, 100, 256):
            held = resources.held_bytes(layers, 64, True)
            for P in (2, 4, 5):
                M = resources.micro_batch_count(None, P, batch, held)
                if batch * held > resources.CUT_ABOVE:  # to a sample (the larger ones first)
                    largest = np.diff(resources.micro_batch_bounds(batch, M, P)).max()
                    assert largest * held <= resources.HELD_BYTES + held
    assert resources.micro_batch_count(None, 2, 500, resources.held_bytes(128, 64, True)) == 8
    assert resources.micro_batch_count(None, 1, 50, resources.held_bytes(64, 128, True)) == 1
    assert resources.micro_batch_count(3, 1, 5000, sample) == 3
    assert resources.micro_batch_count(None, 1, 7, 1 << 30) == 7
    # a batch that holds at most CUT_ABOVE unsplit stays whole (625 samples at 256 layers: 20.5 MB)
    assert resources.micro_batch_count(None, 1, 625, sample) == 1 and 625 * sample <= resources.CUT_ABOVE
    assert resources.micro_batch_count(None, 1, 1250, sample) == 5
    serial = TrainConfig(example="peaks", method="serial", layers=256).resolved()   # the memory check's count
    assert resources.in_flight(serial, 1, 5000, sample) == (1, 250)


def test_which_steps_are_cache_blocked():
    """The built-in steps on NumPy are; ConvStep on the torch engine (float32 with torch) is not."""
    from gpubraid.network.steps import ConvStep, DenseStep

    for dtype in ("float64", "float32"):
        be = resolve_backend("numpy", dtype)
        assert DenseStep(8, "tanh", be).cache_blocked
        conv = ConvStep(4, 6, 6, "relu", be)
        assert conv.cache_blocked == (conv._torch is None)
    assert ConvStep(4, 6, 6, "relu", resolve_backend("numpy", "float64")).cache_blocked


@pytest.mark.parametrize("rank, size, grad, before", [
    (0, 2, True, ["state", "state"]),   # after its warm-up forwards, before the first λ arrives
    (1, 2, True, []),                   # the last rank: before its first state arrives
    (0, 2, False, []), (0, 1, True, [])])
def test_the_idle_work_runs_where_the_rank_would_wait(problem, monkeypatch, rank, size, grad, before):
    """The regulariser's share goes where a rank waits anyway, before any gradient part."""
    from types import SimpleNamespace

    from gpubraid.objective.pipeline import TrainingPipeline
    from gpubraid.runtime import tags
    from gpubraid.runtime.comm import Comm, split_layers

    model, theta, x, y, _ = problem["dense"]
    names = {tags.PIPE_STATE: "state", tags.PIPE_ADJOINT: "adjoint"}
    log, seen = [], []

    def recv_into(buf, source, tag):
        log.append(("recv", names[tag]))
        buf[...] = 0.5

    comm = SimpleNamespace(rank=rank, size=size, recv_into=recv_into,
                           isend=lambda a, dest, tag: log.append(("send", names[tag])))
    monkeypatch.setattr(Comm, "waitall", staticmethod(lambda pending: None))
    bounds = split_layers(model.layers, size)
    layout = model.layout(int(bounds[rank]), int(bounds[rank + 1]))
    gvec = np.zeros(layout.size) if grad else None
    G = layout.views(gvec) if grad else None

    def idle():
        seen.append(list(log))
        assert not grad or not gvec.any()  # before any gradient part
    pipe = TrainingPipeline(model, comm, bounds, PipelineOptions(3, "1f1b"))
    pipe.run(layout.views(model.init_params(layout, seed=1)), G, x, y, 11, idle=idle)
    assert seen == [[("send", kind) for kind in before]]
    assert not grad or gvec.any()


def test_every_rank_of_an_uneven_split_streams_the_same_micro_batches(problem):
    """M follows the largest layer block, so ranks of 4 and 3 layers cut the batch alike."""
    from types import SimpleNamespace

    from gpubraid.objective.pipeline import TrainingPipeline

    model = problem["dense"][0]
    got = set()
    for rank in (0, 1):
        pipe = TrainingPipeline(model, SimpleNamespace(rank=rank, size=2), [0, 4, 7], PipelineOptions())
        got.add(pipe.micro_batches(1 << 20))
    assert got == {resources.micro_batch_count(None, 2, 1 << 20, model.held_bytes(4))} and got != {8}


@pytest.fixture(scope="module")
def problem():
    be = resolve_backend("numpy")
    out = {}
    for kind, in_shape in (("dense", (3,)), ("conv", (2, 5, 4))):
        model = ResNetODE(kind, in_shape, 4, 7, 3, 2.0, "tanh", be, gamma_tik=1e-2, gamma_ddt=1e-2)
        theta = model.init_params(model.layout(), seed=3, scale=2.0)
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((11, *in_shape)), rng.integers(0, 3, 11)
        out[kind] = model, theta, x, y, evaluate(model, model.layout(), theta, x, y)
    return out


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("M", [1, 3, 8, 11])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_one_process_pipeline_equals_serial(problem, kind, M, schedule):
    model, theta, x, y, ref = problem[kind]
    lp = LayerParallel(model, None, ONE, ONE, pipeline=PipelineOptions(M, schedule))
    assert lp.pipelined
    ev = lp.evaluate(theta, x, y, 11)
    assert abs(ev.objective - ref.objective) <= 1e-12 * abs(ref.objective)
    assert np.abs(ev.grad - ref.grad).max() <= 1e-12 * np.abs(ref.grad).max()
    assert lp.pipe.peak_held == (M if schedule == "gpipe" else 1)
    ev0 = lp.evaluate(theta, x, y, 11, grad=False)
    assert ev0.grad is None and abs(ev0.objective - ref.objective) <= 1e-12 * abs(ref.objective)


@pytest.mark.parametrize("opened", [0, 2, 11])
def test_a_partly_opened_batch_is_opened_to_the_end(problem, opened):
    """``u0`` with only its first rows computed (a level choice's samples): the pipeline computes
    the rest, on one rank at once, and gives what a whole u0 gives, bit for bit."""
    model, theta, x, y, _ = problem["dense"]
    pipe = LayerParallel(model, None, ONE, ONE, pipeline=PipelineOptions(3)).pipe
    P = model.layout().views(theta)
    results = []
    for u0, n in ((None, None), (np.full((11, *model.state_shape), np.nan), opened)):
        if u0 is not None:
            u0[:n] = model.open_forward(x[:n], P)
        gvec = np.zeros_like(theta)
        loss, correct, _, _ = pipe.run(P, model.layout().views(gvec), x, y, 11, u0=u0, opened=n)
        results.append((loss, correct, gvec))
    assert results[0][:2] == results[1][:2] and np.array_equal(results[0][2], results[1][2])


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_one_rank_opens_the_batch_once_and_reuses_finished_micro_batches(problem, monkeypatch, schedule):
    """On one layer rank nothing waits for the first micro-batch: the opening layer runs once for the
    whole batch; a micro-batch whose backward is done hands its states to the next (1F1B: one array
    for all M; GPipe holds every micro-batch's states).  The dense step carries the head's λ_N down in
    place: no (n + 1, m, *S) adjoints and no adjoint rows are made."""
    from gpubraid.objective import pipeline

    model, theta, x, y, ref = problem["dense"]
    made, rows, opened = [], [], []
    empty, empty_row, open_forward = pipeline.empty_states, pipeline.empty_aligned, model.open_forward
    monkeypatch.setattr(pipeline, "empty_states", lambda *a: made.append(a[2]) or empty(*a))
    monkeypatch.setattr(pipeline, "empty_aligned", lambda *a: rows.append(a[1]) or empty_row(*a))
    monkeypatch.setattr(model, "open_forward", lambda *a: opened.append(a[0].shape[0]) or open_forward(*a))
    lp = LayerParallel(model, None, ONE, ONE, pipeline=PipelineOptions(4, schedule))
    ev = lp.evaluate(theta, x, y, 11)   # micro-batches of 3, 3, 3, 2 samples
    assert np.abs(ev.grad - ref.grad).max() <= 1e-12 * np.abs(ref.grad).max()
    assert opened == [11]
    assert sorted(shape[1] for shape in made) == ([2, 3] if schedule == "1f1b" else [2, 3, 3, 3])
    assert rows == []
    kept = []   # the spares on offer at each new array: the head's λ arrays are not among them
    taking = pipeline.TrainingPipeline._empty

    def counting(self, shape, dtype, spares=None):
        kept.append(len(spares or ()))
        return taking(self, shape, dtype, spares)

    monkeypatch.setattr(pipeline.TrainingPipeline, "_empty", counting)
    LayerParallel(model, None, ONE, ONE, pipeline=PipelineOptions(11, schedule)).evaluate(theta, x, y, 11)
    assert max(kept) <= (1 if schedule == "1f1b" else 0)
    made.clear()
    lp.evaluate(theta, x, y, 11, grad=False)   # forward only: each micro-batch's states serve the next
    assert sorted(shape[1] for shape in made) == [2, 3]


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_a_level_choice_keeping_one_level_runs_the_pipeline_and_keeps_no_rows(problem, kind):
    """When MGRIT's level choice keeps one level, the whole evaluation is the pipeline (serial's
    gradient), the choice's estimate is in the stats, and no rows are kept: the stale ones of an
    earlier multi-level solve are dropped, so the next multi-level solve starts as a first one does."""
    model, theta, x, y, ref = problem[kind]
    opts = MGRITOptions(max_levels=3, cfactor=2, stability=1e-9, tol=1e-12)
    plain = LayerParallel(model, None, opts, opts)
    streamed = LayerParallel(model, None, opts, opts, pipeline=PipelineOptions(3))
    a, b = plain.evaluate(theta, x, y, 11), streamed.evaluate(theta, x, y, 11)
    assert not streamed.pipelined
    fstats = streamed.last_stats[0]
    assert fstats.levels == 1 and fstats.rho == plain.last_stats[0].rho and fstats.estimate_steps > 0
    assert fstats.micro_batches == 3 and streamed.solve_stats()["micro_batches"] == 3
    assert abs(b.objective - ref.objective) <= 1e-12 * abs(ref.objective)
    assert np.abs(b.grad - ref.grad).max() <= 1e-12 * np.abs(ref.grad).max()
    assert np.abs(b.grad - a.grad).max() > 0  # the micro-batch sums: another summation order
    assert plain.U is not None and streamed.U is None and streamed.Lam is None
    streamed.U, streamed.Lam = plain.U, plain.Lam   # as if an earlier solve had kept rows
    c = streamed.evaluate(theta, x, y, 11, warm=True)
    assert np.array_equal(c.grad, b.grad) and streamed.U is None and streamed.Lam is None


@pytest.mark.parametrize("slack,levels", [(0.5, 1), (2.0, 2)])
def test_a_warm_run_without_rows_enters_more_levels_only_with_a_margin(problem, slack, levels):
    """A warm-started run with no rows to start from (its first solve, or after one-level ones) takes
    two levels only when ρ·(1 + ENTER_MARGIN) allows them; the levels the estimate allowed are in the
    stats.  Runs that start every solve cold, and runs with rows, take the plain choice."""
    from gpubraid.objective.layer_parallel import ENTER_MARGIN

    model, theta, x, y, _ = problem["dense"]

    def lp(stability):
        opts = MGRITOptions(max_levels=2, cfactor=2, stability=stability, tol=0.0, max_iter=1)
        return LayerParallel(model, None, opts, opts, pipeline=PipelineOptions(3))

    free = lp(1e9)
    free.evaluate(theta, x, y, 11, warm=True)
    rows = free.U.copy(), free.Lam.copy()
    rho, H1 = free.last_stats[0].rho, free.fwd.H_max[1]
    free.evaluate(theta, x, y, 11, warm=True)   # linearised at the rows
    rho_rows = free.last_stats[0].rho
    assert free.last_stats[0].levels == 2

    held = lp(H1 * rho * (1 + slack * ENTER_MARGIN))   # 2 levels at ρ; at ρ(1 + margin) only if slack > 1
    held.evaluate(theta, x, y, 11, warm=True)
    assert held.last_stats[0].levels == levels and held.last_stats[0].rho == rho
    assert held.solve_stats().get("levels_allowed") == (2 if levels == 1 else None)
    cold = lp(H1 * rho * (1 + slack * ENTER_MARGIN))
    cold.evaluate(theta, x, y, 11)
    assert cold.last_stats[0].levels == 2
    with_rows = lp(H1 * rho_rows * (1 + slack * ENTER_MARGIN))
    with_rows.U, with_rows.Lam = rows
    with_rows.evaluate(theta, x, y, 11, warm=True)
    assert with_rows.last_stats[0].levels == 2 and with_rows.last_stats[0].rho == rho_rows


def test_methods_and_settings():
    cfg = TrainConfig(example="peaks", method="pipeline", micro_batches=6, schedule="gpipe").resolved()
    m = make_method(cfg)
    assert isinstance(m, Pipelined) and m.forward.max_levels == 1 and m.pipeline == PipelineOptions(6, "gpipe")
    assert make_method(TrainConfig(example="peaks", method="serial").resolved()).pipeline == PipelineOptions()
    for bad, words in ((dict(schedule="zigzag"), "schedule must be one of gpipe, 1f1b, chimera"),
                       (dict(micro_batches=0), "micro_batches must be an integer >= 1")):
        with pytest.raises(UserError, match=words):
            TrainConfig(example="peaks", **bad)


def test_memory_estimate_knows_the_micro_batches_in_flight(monkeypatch):
    be = resolve_backend("numpy")
    cfg = dict(example="peaks", method="pipeline", layers=64, micro_batches=16)
    need = {}
    for schedule in ("gpipe", "1f1b"):
        c = TrainConfig(schedule=schedule, **cfg).resolved()
        assert resources.in_flight(c, 2, 1600) == ((16 if schedule == "gpipe" else 2), 100)
        # on 4 ranks 1F1B's middle micro-batches are the larger for its smaller ends: 1600 / (16 - 1.25)
        assert resources.in_flight(c, 4, 1600) == ((16, 100) if schedule == "gpipe" else (4, 109))
        monkeypatch.setattr(resources, "available_bytes", lambda backend: 0)
        with pytest.raises(UserError, match=r"memory: the states need about ([\d.]+ \w+)") as err:
            resources.check_memory(c, (8,), 72, 1600, 2, be)
        need[schedule] = err.value
    assert "2 x 2 micro-batch(es) in flight" in str(need["1f1b"]) and "2 x 16 micro-batch(es)" in str(need["gpipe"])
    # (2 x 2 held (states and kept σ') + 3) x 33 rows x 100 samples x 8 numbers x 8 bytes, u_0 and λ_0
    # of the 1600 samples, and 24 L-BFGS vectors of 32 layers
    monkeypatch.setattr(resources, "available_bytes",
                        lambda backend: (7 * 33 * 100 + 2 * 1600) * 8 * 8 + 24 * 32 * 72 * 8)
    resources.check_memory(TrainConfig(schedule="1f1b", **cfg).resolved(), (8,), 72, 1600, 2, be)
    with pytest.raises(UserError, match="16 micro-batch"):
        resources.check_memory(TrainConfig(schedule="gpipe", **cfg).resolved(), (8,), 72, 1600, 2, be)
    # the automatic M of a cache-blocked step: micro-batches of 250 at peaks' 256 layers on one rank
    monkeypatch.setattr(resources, "available_bytes", lambda backend: 0)
    serial = TrainConfig(example="peaks", method="serial", layers=256).resolved()
    for sample_bytes, size in ((0, 5000), (resources.held_bytes(256, 64, True), 250)):
        with pytest.raises(UserError, match=f"micro-batch {size} "):
            resources.check_memory(serial, (8,), 72, 5000, 1, be, sample_bytes=sample_bytes)


@pytest.mark.parametrize("extra", [dict(optimizer="lbfgs"), dict(optimizer="adam", lr=0.01, batch_size=64),
                                   dict(optimizer="sgd", lr=0.05, batch_size=100)])
def test_pipeline_history_equals_serial_and_resumes_exactly(tmp_path, extra, mpi_json):
    common = dict(example="peaks", layers=12, n_train=300, n_val=50, val_every=4, progress=False, **extra)
    serial = Trainer(TrainConfig(method="serial", iterations=8, **common)).run()
    full = Trainer(TrainConfig(method="pipeline", micro_batches=5, iterations=8, **common)).run()
    a, b = (np.array([h["objective"] for h in r.history]) for r in (serial, full))
    assert np.max(np.abs(a - b) / np.abs(a)) <= 1e-10
    part = Trainer(TrainConfig(method="pipeline", micro_batches=5, iterations=4, checkpoint_dir=str(tmp_path),
                               **common)).run()
    rest = Trainer(TrainConfig(method="pipeline", micro_batches=5, iterations=8, resume=str(tmp_path),
                               **common)).run()
    strip = lambda h: [{k: v for k, v in e.items() if k != "time_s"} for e in h]
    assert strip(part.history) == strip(full.history[:4]) and strip(rest.history) == strip(full.history)
    assert {e["micro_batches"] for e in full.history} == {5} and "micro_batches" in serial.history[0]


# -- under mpiexec ----------------------------------------------------------------------------------
@pytest.fixture
def mpi_json(mpirun):
    """``mpi_json(n, *args)``: the JSON that tests/mpi/pipeline_check.py prints on ``n`` ranks."""
    return lambda n, *args: mpirun.json(n, "pipeline_check.py", *args, timeout=300)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks,groups,kind", [(1, 1, "dense"), (2, 1, "dense"), (3, 1, "conv"), (4, 1, "dense"),
                                               (2, 2, "dense"), (4, 2, "conv")])
def test_pipelined_gradients_equal_serial_on_every_split(ranks, groups, kind, mpi_json):
    got = mpi_json(ranks, kind, 9, groups)
    assert len(got["runs"]) == 15
    L = ranks // groups
    for name, run in got["runs"].items():
        assert run["grad_err"] <= 1e-12 and run["objective_err"] <= 1e-12, (name, run)
        assert run["levels"] == 1
        if "mgrit" not in name:
            M = int(name.split("-")[0][1:])
            schedule = name.split("-")[1]
            held = {"gpipe": min(M, 23 // groups), "1f1b": min(L, M), "chimera": min(L + (L > 1), M)}[schedule]
            assert run["pipelined"], (name, run)
            assert run["peak_held"] <= held if schedule == "chimera" else run["peak_held"] == held, (name, run)


@pytest.mark.gpu
@pytest.mark.mpi
def test_pipelines_on_cupy_over_two_ranks_equal_serial(mpi_json):
    """GPipe, 1F1B and Chimera with CuPy arrays on 2 ranks (sharing the GPU): serial's gradient."""
    from gpubraid.runtime.backend import gpu_available

    if not gpu_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    got = mpi_json(2, "dense", 9, 1, "cupy")
    assert len(got["runs"]) == 15
    for name, run in got["runs"].items():
        assert run["grad_err"] <= 1e-12 and run["objective_err"] <= 1e-12, (name, run)


@pytest.mark.mpi
@pytest.mark.parametrize("method,optimizer,ranks,groups", [("pipeline", "lbfgs", 2, 1), ("pipeline", "adam", 4, 2),
                                                           ("serial", "lbfgs", 3, 1)])
def test_pipeline_training_on_ranks_follows_one_rank_serial(method, optimizer, ranks, groups, mpi_json):
    ref = mpi_json(1, "train", "serial", optimizer, 1, "1f1b", 1)
    for schedule in SCHEDULES:
        got = mpi_json(ranks, "train", method, optimizer, 3, schedule, groups)
        a, b = (np.array([h["objective"] for h in r["history"]]) for r in (ref, got))
        assert a.shape == b.shape and np.max(np.abs(a - b) / np.abs(a)) <= 1e-10, (schedule, a, b)
        assert got["val_accuracy"] == ref["val_accuracy"]


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_pipeline_on_cupy_equals_serial(problem, kind):
    from gpubraid.runtime.backend import gpu_available

    if not gpu_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    model, theta, x, y, ref = problem[kind]
    gpu = resolve_backend("cupy")
    net = ResNetODE(kind, model.in_shape, 4, 7, 3, 2.0, "tanh", gpu, gamma_tik=1e-2, gamma_ddt=1e-2)
    for schedule in ("gpipe", "1f1b"):
        lp = LayerParallel(net, None, ONE, ONE, pipeline=PipelineOptions(3, schedule))
        ev = lp.evaluate(gpu.asarray(theta), gpu.asarray(x), gpu.xp.asarray(y), 11)
        assert np.abs(gpu.to_host(ev.grad) - ref.grad).max() <= 1e-12 * np.abs(ref.grad).max()
