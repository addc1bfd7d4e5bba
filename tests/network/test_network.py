"""Generic networks: any number of parameter groups, openings, heads; user steps train like built-ins."""
import json

import numpy as np
import pytest
from user_steps import TwoLayerStep, toy_arrays

from gpubraid.errors import UserError
from gpubraid.network.activations import ACTIVATIONS
from gpubraid.network.heads import Classifier, Regression
from gpubraid.network.network import Network, ResNetODE, network_for_data
from gpubraid.network.openings import ConvOpening, DenseOpening, IdentityOpening
from gpubraid.network.reference import evaluate
from gpubraid.network.steps import ConvStep, DenseStep
from gpubraid.runtime.backend import resolve_backend
from tests.network.gradcheck import fd_check

BE = resolve_backend("numpy", "float64")
KINDS = {"dense": (3,), "conv": (2, 5, 4)}


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_generic_network_of_builtin_step_is_resnetode_bitwise(kind):
    in_shape = (3,) if kind == "dense" else (2, 5, 4)
    ref = ResNetODE(kind, in_shape, 3, 5, 4, 1.5, "tanh", BE, 0.1, 0.2)
    step = DenseStep(3, "tanh", BE) if kind == "dense" else ConvStep(3, 5, 4, "tanh", BE)
    opening = DenseOpening("tanh") if kind == "dense" else ConvOpening("tanh")
    net = Network(step, in_shape, 5, 1.5, BE, Classifier(4), opening, 0.1, 0.2)
    assert net.layout().offsets == ref.layout().offsets
    t1, t2 = ref.init_params(ref.layout(), 3, 0.7), net.init_params(net.layout(), 3, 0.7)
    assert np.array_equal(t1, t2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, *in_shape)), rng.integers(0, 4, 6)
    e1, e2 = evaluate(ref, ref.layout(), t1, x, y), evaluate(net, net.layout(), t2, x, y)
    assert e1.objective == e2.objective and np.array_equal(e1.grad, e2.grad)
    assert list(ref.layout().offsets) == ["open_K", "open_b", "K", "b", "W", "c"]


@pytest.mark.parametrize("head", ["classifier", "regression"])
def test_three_group_step_gradient_by_finite_differences(head):
    step = TwoLayerStep(4, 5, BE)
    hd = Classifier(3) if head == "classifier" else Regression(2)
    net = Network(step, (3,), 5, 1.2, BE, hd, gamma_tik=0.1, gamma_ddt=0.3)
    assert list(net.layout().offsets) == ["open_K", "open_b", "K1", "K2", "b", "W", "c"]
    rng = np.random.default_rng(0)
    theta = net.init_params(net.layout(), seed=0) + 0.2 * rng.standard_normal(net.layout().size)
    x = rng.standard_normal((7, 3))
    y = rng.integers(0, 3, 7) if head == "classifier" else rng.standard_normal((7, 2))
    ev = fd_check(net, theta, x, y)
    if head == "regression":
        P = net.layout().views(theta)
        from gpubraid.network.reference import forward_states
        pred = net.logits(forward_states(net, P, x)[-1], P)
        assert abs(ev.loss - np.mean((pred - y) ** 2)) <= 1e-14 and ev.n_correct == 0


def test_image_inputs_default_conv_opening_and_regression_head():
    net = Network(ConvStep(3, 4, 4, "smoothrelu", BE), (1, 4, 4), 3, 1.0, BE, Regression(2), gamma_tik=0.05)
    assert isinstance(net.opening, ConvOpening) and net.layout().shapes["open_K"] == (3, 1, 3, 3)
    rng = np.random.default_rng(2)
    theta = net.init_params(net.layout(), seed=2) + 0.1 * rng.standard_normal(net.layout().size)
    fd_check(net, theta, rng.standard_normal((4, 1, 4, 4)), rng.standard_normal((4, 2)))


def test_identity_opening_and_callable_init():
    class Step(TwoLayerStep):
        param_init = ("normal", lambda rng, shape: rng.uniform(-1, 1, shape), "zeros")

    assert isinstance(Network(Step(3, 4, BE), (3,), 4, 1.0, BE, Classifier(2)).opening, DenseOpening)
    net = Network(Step(3, 4, BE), (3,), 4, 1.0, BE, Classifier(2), opening=IdentityOpening())
    assert isinstance(net.opening, IdentityOpening) and "open_K" not in net.layout().offsets
    full = net.init_params(net.layout(), seed=1, scale=2.0)
    F = net.layout().views(full)
    assert np.all(F.b == 0) and np.abs(F.K2).max() <= 2.0 and np.abs(F.K2).max() > 1.0
    rng = np.random.default_rng(3)
    fd_check(net, full, rng.standard_normal((5, 3)), rng.integers(0, 2, 5))


def test_init_independent_of_block_split():
    net = Network(TwoLayerStep(4, 5, BE), (3,), 9, 1.0, BE, Classifier(3))
    F = net.layout().views(net.init_params(net.layout(), seed=4))
    for a, b in ((0, 3), (3, 7), (7, 9)):
        lay = net.layout(a, b)
        Q = lay.views(net.init_params(lay, seed=4))
        for name in net.layer_names:
            assert np.array_equal(Q[name], F[name][a:b])
        for name in Q.names():
            if name not in net.layer_names:
                assert np.array_equal(Q[name], F[name])


def test_regulariser_block_split_three_groups():
    net = Network(TwoLayerStep(3, 4, BE), (2,), 7, 1.0, BE, Classifier(3), gamma_tik=0.2, gamma_ddt=0.7)
    net.h[:] = np.linspace(0.1, 0.4, 7)
    layout = net.layout()
    rng = np.random.default_rng(6)
    theta = rng.standard_normal(layout.size)
    g = np.zeros_like(theta)
    R = net.regularizer(layout, layout.views(theta), layout.views(g))
    d = rng.standard_normal(theta.shape)
    eps = 1e-6
    fd = (net.regularizer(layout, layout.views(theta + eps * d)) - net.regularizer(layout, layout.views(theta - eps * d))) / (2 * eps)
    assert abs(fd - g @ d) <= 1e-8 * abs(g @ d)
    F, G = layout.views(theta), layout.views(g)
    total = 0.0
    for a, b in ((0, 3), (3, 4), (4, 7)):
        lay = net.layout(a, b)
        vec = np.zeros(lay.size)
        Q = lay.views(vec)
        for name in Q.names():
            Q[name][...] = F[name][a:b] if name in net.layer_names else F[name]
        left = tuple(F[n][a - 1] for n in net.layer_names) if a > 0 else None
        right = tuple(F[n][b] for n in net.layer_names) if b < 7 else None
        gq = np.zeros_like(vec)
        total += net.regularizer(lay, Q, lay.views(gq), left, right)
        Gq = lay.views(gq)
        for name in Q.names():
            ref = G[name][a:b] if name in net.layer_names else G[name]
            assert np.allclose(Gq[name], ref, rtol=1e-13, atol=1e-15), name
    assert abs(total - R) <= 1e-13 * R


def test_describe_is_json():
    net = Network(TwoLayerStep(4, 5, BE), (3,), 6, 2.0, BE, Regression(2))
    d = json.loads(json.dumps(net.describe()))
    assert d["step"] == {"name": "two_layer", "channels": 4, "hidden": 5, "activation": "tanh",
                         "factory": "user_steps:TwoLayerStep"}
    assert d["layers"] == 6 and d["final_time"] == 2.0 and d["task"] == "regression" and d["n_out"] == 2
    assert d["in_shape"] == [3] and d["state_shape"] == [4] and d["param_shapes"]["K1"] == [5, 4]
    r = json.loads(json.dumps(ResNetODE("conv", (1, 4, 4), 3, 4, 5, 1.0, "relu", BE).describe()))
    assert r["kind"] == "conv" and r["n_classes"] == 5 and r["activation"] == "relu" and r["step"]["name"] == "conv"


def test_network_for_data_picks_the_head():
    from gpubraid.data.dataset import dataset_from_arrays
    ds = dataset_from_arrays(*toy_arrays(30, 3, 3))
    net = network_for_data(ds.meta(), TwoLayerStep(4, 5, BE), layers=4, final_time=1.0, backend=BE)
    assert isinstance(net.head, Classifier) and net.n_classes == 3
    ds = dataset_from_arrays(*toy_arrays(30, 3, regression=True), task="regression")
    net = network_for_data(ds.meta(), TwoLayerStep(4, 5, BE), layers=4, final_time=1.0, backend=BE)
    assert isinstance(net.head, Regression) and net.n_out == 2 and net.n_classes is None


def test_heads_on_an_empty_batch():
    """A share of no samples (a data group left without any): loss NaN, nothing correct, λ_N of no
    rows, zero gradients, no warning."""
    import warnings

    for head, y in ((Classifier(3), np.zeros(0, dtype=np.int64)), (Regression(2), np.zeros((0, 2)))):
        h = head.bind((2, 3), BE)
        params = (np.ones((h.n_out, 6)), np.ones(h.n_out))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss, correct, lam, grads = h.loss(np.zeros((0, 2, 3)), y, params)
        assert np.isnan(loss) and correct == 0 and lam.shape == (0, 2, 3)
        assert all(g.shape == p.shape and not g.any() for g, p in zip(grads, params))
        assert h.predict(np.zeros((0, 2, 3)), params).shape == (0, h.n_out)


def test_bad_networks_and_targets_raise_user_error():
    class Clash(TwoLayerStep):
        param_names = ("W", "K2", "b")

    with pytest.raises(UserError, match="distinct"):
        Network(Clash(3, 4, BE), (3,), 4, 1.0, BE, Classifier(2))
    with pytest.raises(UserError, match="lacks 'state_shape'"):
        Network(object(), (3,), 4, 1.0, BE, Classifier(2))
    with pytest.raises(UserError, match="no default opening"):
        Network(TwoLayerStep(3, 4, BE), (2, 3, 3), 4, 1.0, BE, Classifier(2))
    with pytest.raises(UserError, match="param_names has 2 names"):
        class Short(TwoLayerStep):
            param_names = ("a", "b")
        Network(Short(3, 4, BE), (3,), 4, 1.0, BE, Classifier(2))
    net = Network(TwoLayerStep(3, 4, BE), (3,), 4, 1.0, BE, Classifier(3))
    theta = net.init_params(net.layout())
    with pytest.raises(UserError, match="labels must lie in 0..2"):
        evaluate(net, net.layout(), theta, np.zeros((2, 3)), np.array([0, -1]))
    with pytest.raises(UserError, match="labels must lie in 0..2"):
        evaluate(net, net.layout(), theta, np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(UserError, match=r"integer labels of shape \(2,\); got \(2,\) float64"):
        evaluate(net, net.layout(), theta, np.zeros((2, 3)), np.array([0.0, 1.0]))
    reg = Network(TwoLayerStep(3, 4, BE), (3,), 4, 1.0, BE, Regression(2))
    with pytest.raises(UserError, match="regression targets"):
        evaluate(reg, reg.layout(), reg.init_params(reg.layout()), np.zeros((2, 3)), np.zeros((2, 3)))


def problem(kind, act, N=4, seed=0, gamma=(0.1, 0.3)):
    model = ResNetODE(kind, KINDS[kind], 3, N, 3, 1.5, act, BE, gamma_tik=gamma[0], gamma_ddt=gamma[1])
    layout = model.layout()
    rng = np.random.default_rng(seed)
    theta = model.init_params(layout, seed=seed) + 0.2 * rng.standard_normal(layout.size)
    x = rng.standard_normal((5, *KINDS[kind]))
    y = rng.integers(0, 3, 5)
    return model, layout, theta, x, y


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_gradient_matches_finite_differences_per_group(kind, act):
    model, layout, theta, x, y = problem(kind, act)
    ev = evaluate(model, layout, theta, x, y)
    rng = np.random.default_rng(1)
    for group, (lo, hi) in layout.offsets.items():
        d = np.zeros_like(theta)
        d[lo:hi] = rng.standard_normal(hi - lo)
        eps = 1e-6
        fp = evaluate(model, layout, theta + eps * d, x, y, grad=False).objective
        fm = evaluate(model, layout, theta - eps * d, x, y, grad=False).objective
        fd = (fp - fm) / (2 * eps)
        an = float(ev.grad @ d)
        assert abs(fd - an) <= 1e-6 * max(abs(an), 1e-3), (group, fd, an)


@pytest.mark.parametrize("kind", list(KINDS))
def test_regulariser_gradient_and_block_split(kind):
    """R's gradient (Tikhonov + ddt) by finite differences; block shares add up to the whole."""
    model, layout, theta, x, y = problem(kind, "tanh", N=7, gamma=(0.2, 0.7))
    model.h[:] = np.linspace(0.1, 0.4, 7)  # non-uniform steps exercise h_n in both terms
    g = np.zeros_like(theta)
    R = model.regularizer(layout, layout.views(theta), layout.views(g))
    rng = np.random.default_rng(6)
    d = rng.standard_normal(theta.shape)
    eps = 1e-6
    Rp = model.regularizer(layout, layout.views(theta + eps * d))
    Rm = model.regularizer(layout, layout.views(theta - eps * d))
    assert abs((Rp - Rm) / (2 * eps) - g @ d) <= 1e-8 * abs(g @ d)
    F = layout.views(theta)
    total, parts = 0.0, []
    for a, b in ((0, 3), (3, 4), (4, 7)):
        lay = model.layout(a, b)
        vec = np.zeros(lay.size)
        Q = lay.views(vec)
        Q.K[...], Q.b[...] = F.K[a:b], F.b[a:b]
        if lay.has_open:
            Q.open_K[...], Q.open_b[...] = F.open_K, F.open_b
        if lay.has_class:
            Q.W[...], Q.c[...] = F.W, F.c
        left = (F.K[a - 1], F.b[a - 1]) if a > 0 else None
        right = (F.K[b], F.b[b]) if b < 7 else None
        gq = np.zeros_like(vec)
        total += model.regularizer(lay, Q, lay.views(gq), left, right)
        parts.append((a, b, lay.views(gq)))
    assert abs(total - R) <= 1e-13 * R
    G = layout.views(g)
    for a, b, Gq in parts:
        assert np.allclose(Gq.K, G.K[a:b], rtol=1e-13, atol=1e-15)
        assert np.allclose(Gq.b, G.b[a:b], rtol=1e-13, atol=1e-15)


def test_bad_resnet_settings_raise_user_error():
    with pytest.raises(UserError, match="activation"):
        ResNetODE("dense", (2,), 3, 4, 3, 1.0, "gelu", BE)
    with pytest.raises(UserError, match="layers"):
        ResNetODE("dense", (2,), 3, 0, 3, 1.0, "tanh", BE)
    with pytest.raises(UserError, match="final_time"):
        ResNetODE("dense", (2,), 3, 4, 3, 0.0, "tanh", BE)
    with pytest.raises(UserError, match="final_time"):
        ResNetODE("dense", (2,), 3, 4, 3, float("inf"), "tanh", BE)
    with pytest.raises(UserError, match="kind"):
        ResNetODE("rnn", (2,), 3, 4, 3, 1.0, "tanh", BE)
    with pytest.raises(UserError, match="conv networks"):
        ResNetODE("conv", (2,), 3, 4, 3, 1.0, "tanh", BE)
