"""gpubraid.runtime.backend: backend and dtype names, and a float32 backend computes in float32."""
import numpy as np
import pytest

from gpubraid.errors import UserError
from gpubraid.network.network import ResNetODE
from gpubraid.network.reference import evaluate
from gpubraid.runtime.backend import resolve_backend


def test_bad_backend_and_dtype_raise_user_error():
    with pytest.raises(UserError, match="backend"):
        resolve_backend("tpu")
    with pytest.raises(UserError, match="dtype"):
        resolve_backend("numpy", "float16")


def test_float32_backend_runs_in_float32():
    be = resolve_backend("numpy", "float32")
    model = ResNetODE("dense", (2,), 3, 4, 3, 1.0, "tanh", be)
    layout = model.layout()
    theta = model.init_params(layout)
    ev = evaluate(model, layout, theta, be.asarray(np.ones((2, 2))), np.array([0, 1]))
    assert theta.dtype == np.float32 and ev.grad.dtype == np.float32
