"""gpubraid.network.spec: a network rebuilt from its description equals the original bitwise."""
import json

import numpy as np
import pytest
from user_steps import TwoLayerStep

from gpubraid.errors import UserError
from gpubraid.network.heads import Regression
from gpubraid.network.network import Network, ResNetODE
from gpubraid.network.reference import evaluate
from gpubraid.runtime.backend import resolve_backend

BE = resolve_backend("numpy", "float64")


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_network_from_spec_rebuilds_resnetode_bitwise(kind):
    from gpubraid.network.spec import network_from_spec
    in_shape = (3,) if kind == "dense" else (2, 5, 4)
    ref = ResNetODE(kind, in_shape, 3, 5, 4, 1.5, "relu", BE, 0.1, 0.2)
    meta = {"in_shape": in_shape, "n_classes": 4}
    net = network_from_spec(meta, json.loads(json.dumps(ref.describe())), BE)
    t = ref.init_params(ref.layout(), 1)
    assert np.array_equal(t, net.init_params(net.layout(), 1))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, *in_shape)), rng.integers(0, 4, 6)
    e1, e2 = evaluate(ref, ref.layout(), t, x, y), evaluate(net, net.layout(), t, x, y)
    assert e1.objective == e2.objective and np.array_equal(e1.grad, e2.grad)


def test_network_from_spec_user_and_torch_steps():
    from gpubraid.network.spec import network_from_spec
    meta = {"in_shape": (3,), "task": "regression", "n_out": 2}
    spec = {"step": {"name": "two_layer", "factory": "user_steps:TwoLayerStep",
                     "kwargs": {"channels": 4, "hidden": 5}}, "layers": 4, "final_time": 1.0, "gamma_tik": 0.1}
    net = network_from_spec(meta, spec, BE, trust=True)
    assert isinstance(net.step, TwoLayerStep) and net.step.param_shapes[0] == (5, 4) and net.gamma_tik == 0.1
    assert net.describe()["step"]["factory"] == "user_steps:TwoLayerStep"
    with pytest.raises(UserError, match="cannot import"):
        network_from_spec(meta, {"step": {"name": "x", "factory": "nowhere:Step"}, "layers": 2, "final_time": 1.0}, BE, trust=True)
    with pytest.raises(UserError, match="give its 'factory'"):
        network_from_spec(meta, {"step": {"name": "x"}, "layers": 2, "final_time": 1.0}, BE)
    pytest.importorskip("torch")
    from user_steps import two_layer_module

    from gpubraid.network.torch_step import TorchStep
    ts = TorchStep(two_layer_module, (4,), BE, kwargs={"channels": 4, "hidden": 3})
    net = Network(ts, (3,), 4, 1.0, BE, Regression(2))
    d = json.loads(json.dumps(net.describe()))
    assert d["step"]["factory"] == "user_steps:two_layer_module" and d["step"]["kwargs"] == {"channels": 4, "hidden": 3}
    again = network_from_spec(meta, d, BE, trust=True)
    t = net.init_params(net.layout(), 2)
    assert np.array_equal(t, again.init_params(again.layout(), 2))
    x, y = np.random.default_rng(0).standard_normal((5, 3)), np.zeros((5, 2))
    assert evaluate(net, net.layout(), t, x, y).objective == evaluate(again, again.layout(), t, x, y).objective
