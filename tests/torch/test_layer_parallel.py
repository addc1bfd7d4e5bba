"""gpubraid.torch.LayerParallel: a layer-parallel block inside PyTorch scripts (float64 throughout).

Gradients of the block, and of the opening and head through autograd, against torch autograd of the
same unrolled network on 1, 2 and 3 ranks (exact and serial); one-shot started converged; state
dicts across rank counts; model-file interoperability; settings errors; shared memory."""
import functools
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from user_steps import two_layer_module  # noqa: E402

from gpubraid.errors import UserError  # noqa: E402
from gpubraid.io import modelfile  # noqa: E402
from gpubraid.network.heads import Classifier  # noqa: E402
from gpubraid.network.network import Network  # noqa: E402
from gpubraid.network.openings import DenseOpening  # noqa: E402
from gpubraid.network.torch_step import TorchStep  # noqa: E402
from gpubraid.runtime.backend import resolve_backend  # noqa: E402
from gpubraid.torch import LayerParallel, layer_tensors  # noqa: E402
from gpubraid.torch.solves import as_array, backend_of  # noqa: E402

BE = resolve_backend("numpy", "float64")
BLOCK = functools.partial(two_layer_module, 4, 6)


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def check(mpirun):
    """``check(n, *args)``: run tests/mpi/torch_module_check.py on ``n`` ranks; its last JSON line."""
    def run(n, *args):
        out = mpirun(n, "torch_module_check.py", *args, timeout=240)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else None
    return run


def unrolled(lp, x):
    """u_N of the same layers as plain torch (a fresh block per layer with the layer's parameters)."""
    u = x
    for n in range(lp.layers):
        params = {name.replace("_", ".", 1): getattr(lp, name)[n] for name in lp.group_names}
        u = u + lp.h[n] * torch.func.functional_call(BLOCK(), params, (u,))
    return u


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_gradients_equal_unrolled_autograd(ranks, check):
    """A conv ResNet (opening conv on the first rank, 7 layers, linear head on the last), one
    cross-entropy backward: every gradient equals torch autograd of the unrolled network (pipeline:
    3 micro-batches streamed through the ranks)."""
    results = check(ranks, "grads", "exact", "serial", "pipeline")
    assert [r["method"] for r in results] == ["exact", "serial", "pipeline"]
    for got in results:
        assert got["ranks"] == ranks
        assert set(got["errors"]) == {"lp.conv1_weight", "lp.conv1_bias", "lp.conv2_weight", "lp.conv2_bias",
                                      "open.weight", "open.bias", "head.weight", "head.bias"}
        assert got["max_error"] <= 1e-10, got
    assert results[0]["fwd_levels"] == 3 and results[0]["fwd_iterations"] >= 2   # exact: MGRIT did the work


@pytest.mark.mpi
def test_state_dict_saved_on_two_ranks_loads_on_one(tmp_path, check):
    path = str(tmp_path / "model.pt")
    check(2, "save", path)
    got = check(1, "load", path)
    assert got["same_labels"] == got["n"] == 30 and got["distinct"] >= 2, got


def test_one_process_matches_unrolled_forward_and_input_gradient():
    lp = LayerParallel(BLOCK, 9, 1.5, method="exact", tol=1e-13, cfactor=3, stability=0.0)
    x = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(5, 4)
    (lp(x) * w).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    ref = unrolled(lp, x2)
    (ref * w).sum().backward()
    assert torch.allclose(lp(x), ref, rtol=0, atol=1e-12)
    assert torch.allclose(x.grad, x2.grad, rtol=0, atol=1e-12)
    assert lp.last_stats[0].levels == 2   # 9 -> 3 layers


def test_oneshot_first_step_equals_exact_when_started_converged():
    torch.manual_seed(0)
    lp = LayerParallel(BLOCK, 16, 2.0, method="exact", tol=1e-13, max_iter=100, cfactor=2, stability=0.0,
                       init_scale=2.0)
    x, w = torch.randn(6, 4), torch.randn(6, 4)

    def step():
        lp.zero_grad()
        (lp(x) * w).sum().backward()
        return [p.grad.clone() for p in lp.stacked()]

    exact = step()
    assert lp.last_stats[0].iterations >= 2
    # one-shot warm-starts from the converged states and adjoints the module keeps
    lp.set_method("oneshot", full_batch=True, cfactor=2, stability=0.0, conv_bound=0.0)
    oneshot = step()
    assert lp.last_stats[0].levels > 1 and lp.last_stats[0].iterations == 1
    for a, b in zip(oneshot, exact):
        assert torch.allclose(a, b, rtol=0, atol=1e-10 * float(b.abs().max()))
    # from a cold start one iteration is not converged: the warm start is what made them equal
    cold = LayerParallel(BLOCK, 16, 2.0, method="oneshot", cfactor=2, stability=0.0, conv_bound=0.0,
                         nested=False, init_scale=2.0)
    cold.zero_grad()
    (cold(x) * w).sum().backward()
    assert max(float((p.grad - e).abs().max()) for p, e in zip(cold.stacked(), exact)) > 1e-6


def test_eval_pipeline_and_converged_equal_train_exact():
    lp = LayerParallel(BLOCK, 8, 1.0, method="oneshot")
    x = torch.randn(300, 4)
    ref = unrolled(lp, x).detach()
    lp.eval()
    with torch.no_grad():
        piped = lp(x)
    lp.set_method("oneshot", evaluation="converged", cfactor=2, stability=0.0, tol=1e-13)
    with torch.no_grad():
        conv = lp(x)
    assert torch.allclose(piped, ref, rtol=0, atol=1e-13) and torch.allclose(conv, ref, rtol=0, atol=1e-11)
    assert lp.last_stats[0].levels > 1


def test_parameters_share_memory_with_the_solver_arrays():
    lp = LayerParallel(BLOCK, 4, 1.0)
    p = lp.stacked()[0]
    a = as_array(p, backend_of(p))
    assert a.ctypes.data == p.data_ptr() and a.shape == tuple(p.shape)
    assert [tuple(q.shape) for q in lp.stacked()] == [(4, 6, 4), (4, 6), (4, 4, 6)]
    assert lp.group_names == ("lin1_weight", "lin1_bias", "lin2_weight")


@pytest.mark.gpu
def test_cuda_tensors_go_to_cupy_without_copies_and_match_the_cpu():
    """On a GPU the solves run on CuPy views of the CUDA parameters (DLPack, same pointer), and
    forward and gradients equal the CPU module's to round-off."""
    pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    cpu = LayerParallel(BLOCK, 6, 1.0, method="exact", tol=1e-13, max_levels=2, cfactor=2)
    gpu = LayerParallel(BLOCK, 6, 1.0, method="exact", tol=1e-13, max_levels=2, cfactor=2).cuda()
    gpu.load_state_dict(cpu.state_dict())
    p = gpu.stacked()[0]
    a = as_array(p, backend_of(p))
    assert int(a.data.ptr) == p.data_ptr() and a.shape == tuple(p.shape)
    x = torch.randn(9, 4)
    out_c, out_g = cpu(x), gpu(x.cuda())
    out_c.pow(2).sum().backward()
    out_g.pow(2).sum().backward()
    assert torch.allclose(out_g.cpu(), out_c, rtol=1e-12, atol=1e-13)
    for qc, qg in zip(cpu.stacked(), gpu.stacked()):
        assert torch.allclose(qg.grad.cpu(), qc.grad, rtol=1e-10, atol=1e-12)


def test_initial_layers_equal_gpubraid_train_layers_and_do_not_depend_on_ranks():
    lp = LayerParallel(BLOCK, 5, 1.0, seed=3)
    step = TorchStep(BLOCK, (4,), BE)
    net = Network(step, (3,), 5, 1.0, BE, Classifier(3), DenseOpening())
    views = net.layout().views(net.init_params(net.layout(), seed=3))
    for name in lp.group_names:
        assert np.array_equal(getattr(lp, name).detach().numpy(), views[name])


def test_model_file_layers_load_and_predict_like_gpubraid(tmp_path):
    """A gpubraid model file of a torch step: its layers load into LayerParallel, and with the file's
    opening and head as torch ops the labels equal gpubraid.load(...).predict."""
    step = TorchStep(two_layer_module, (4,), BE, kwargs={"channels": 4, "hidden": 6})
    net = Network(step, (3,), 6, 1.2, BE, Classifier(3), DenseOpening("tanh"))
    theta = net.init_params(net.layout(), seed=1, scale=1.5)
    path = str(tmp_path / "m.safetensors")
    modelfile.save(path, net, theta, {"kind": "dense", "task": "classification", "in_shape": [3], "n_classes": 3})
    lp = LayerParallel(BLOCK, 6, 1.2)
    lp.load_state_dict(layer_tensors(path))
    tensors, _ = modelfile.read(path)
    t = {k: torch.from_numpy(v) for k, v in tensors.items()}
    x = np.random.default_rng(0).standard_normal((40, 3))
    lp.eval()
    with torch.no_grad():
        uN = lp(torch.tanh(torch.from_numpy(x) @ t["open_K"].T + t["open_b"]))
        logits = uN @ t["W"].T + t["c"]
    assert np.array_equal(logits.argmax(1).numpy(), modelfile.load(path, step=net.step).predict(x))
    assert np.allclose(logits.numpy(), modelfile.load(path, step=net.step).outputs(x), rtol=0, atol=1e-12)
    # and back: the module's state dict holds the file's layer tensors, same names and shapes
    sd = lp.state_dict()
    assert all(np.array_equal(sd[k].numpy(), tensors[k]) for k in lp.group_names)


def test_load_state_dict_needs_the_serial_layout():
    lp = LayerParallel(BLOCK, 4, 1.0)
    sd = lp.state_dict()
    sd["lin1_bias"] = sd["lin1_bias"][:3]
    with pytest.raises(RuntimeError, match="serial layout has shape"):
        lp.load_state_dict(sd)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "nosuch"}, "method must be one of"),
    ({"cfactor": 1}, "cfactor must be"),
    ({"lr": 0.1}, "unknown LayerParallel setting 'lr'"),
    ({"monitor_every": 5}, "unknown LayerParallel setting 'monitor_every'"),  # the Trainer's loop, not a solve's
    ({"estimate_every": 5}, "unknown LayerParallel setting 'estimate_every'"),
    ({"evaluation": "fast"}, "evaluation must be one of"),
    ({"layers": 0}, "layers"),
])
def test_bad_settings_are_one_line_errors(kwargs, match):
    args = {"layers": 4, **kwargs}
    with pytest.raises(UserError, match=match):
        LayerParallel(BLOCK, args.pop("layers"), 1.0, **args)


def test_oneshot_keeps_the_level_cap_of_its_layer_ranks():
    """As in ``gpubraid train``: at most 2 levels on up to 2 layer ranks (here 1) unless
    ``levels_for_ranks=False``; other methods are not capped."""
    assert LayerParallel(BLOCK, 16, 1.0, method="oneshot").settings.method.forward.max_levels == 2
    free = LayerParallel(BLOCK, 16, 1.0, method="oneshot", levels_for_ranks=False, max_levels=5)
    assert free.settings.method.forward.max_levels == 5
    assert LayerParallel(BLOCK, 16, 1.0, method="exact", max_levels=5).settings.method.forward.max_levels == 5
    lp = LayerParallel(BLOCK, 16, 1.0, method="exact")
    lp.set_method("oneshot")
    assert lp.settings.method.forward.max_levels == 2


def test_bad_blocks_and_inputs():
    with pytest.raises(UserError, match="not a module instance"):
        LayerParallel(BLOCK(), 4, 1.0)
    lp = LayerParallel(BLOCK, 4, 1.0)
    with pytest.raises(UserError, match="must have the parameters' dtype"):
        lp(torch.randn(3, 4, dtype=torch.float32))
    with pytest.raises(UserError, match="must be a tensor"):
        lp(None)
    with pytest.raises(UserError, match="ranks"):
        LayerParallel(BLOCK, 4, 1.0, comm=type("C", (), {"Get_rank": lambda s: 0, "Get_size": lambda s: 5})())


def test_inputs_the_block_cannot_take_are_one_line_errors_and_leave_the_random_state():
    """States of a shape the block does not take, or a block that changes the shape, are refused in
    one line before any solve; the check does not draw from torch's random generator."""
    lp = LayerParallel(lambda: torch.nn.Linear(4, 4), 4, 1.0, method="serial")
    with pytest.raises(UserError, match=r"cannot take states of shape \(5,\)"):
        lp(torch.zeros(3, 5, dtype=torch.float64))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert lp(torch.zeros(3, 4, dtype=torch.float64)).shape == (3, 4)
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(UserError, match="to the same shape"):
        LayerParallel(lambda: torch.nn.Linear(4, 3), 4, 1.0)(torch.zeros(3, 4, dtype=torch.float64))
