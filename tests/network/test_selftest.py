"""The step self-test passes correct steps and names the check a planted bug breaks."""
import io

import numpy as np
import pytest
from user_steps import TwoLayerStep, two_layer_module

from gpubraid.network.selftest import check_step, exit_code, run
from gpubraid.network.steps import ConvStep, DenseStep
from gpubraid.runtime import host
from gpubraid.runtime.backend import resolve_backend

BE = resolve_backend("numpy", "float64")


def failed(report):
    return {c.name for c in report.failed()}


@pytest.mark.parametrize("make", [lambda: DenseStep(4, "tanh", BE), lambda: ConvStep(3, 5, 4, "tanh", BE),
                                  lambda: DenseStep(3, "relu", BE), lambda: TwoLayerStep(4, 5, BE)],
                         ids=["dense", "conv", "dense-relu", "three-groups"])
def test_builtin_and_user_steps_pass(make):
    report = check_step(make())
    assert report.ok, str(report)
    chains = isinstance(make(), DenseStep) and host.library() is not None  # the compiled chains ran
    assert ("PASS  chain          max rel. diff" in str(report)) == chains
    assert exit_code(report) == 0
    assert "all checks passed" in str(report)


def test_torch_step_passes():
    pytest.importorskip("torch")
    from gpubraid.network.torch_step import TorchStep

    report = check_step(TorchStep(lambda: two_layer_module(4, 6), (4,), BE))
    assert report.ok, str(report)


class WrongSignAdjoint(DenseStep):
    def adjoint(self, u, lam, params, h):
        return lam - (super().adjoint(u, lam, params, h) - lam)


class MissingBiasGrad(DenseStep):
    def param_grad(self, u, lam, params, h):
        gK, gb = super().param_grad(u, lam, params, h)
        return gK, np.zeros_like(gb)


class MissingGroupTerm(TwoLayerStep):
    def param_grad(self, u, lam, params, h):
        g1, g2, gb = super().param_grad(u, lam, params, h)
        return g1, 0.5 * g2, gb  # K2's gradient off by a factor


class BatchDependent(DenseStep):
    def forward(self, u, params, h):
        out = super().forward(u, params, h)
        return out + 1e-6 * (u.shape[0] - 1)  # depends on how many layers are passed at once


class Nondeterministic(DenseStep):
    rng = np.random.default_rng(0)

    def forward(self, u, params, h):
        return super().forward(u, params, h) + 1e-15 * self.rng.standard_normal(u.shape)


class WrongShape(DenseStep):
    def param_grad(self, u, lam, params, h):
        return super().param_grad(u, lam, params, h)[:1]


class WrongDtype(DenseStep):
    def forward(self, u, params, h):
        return super().forward(u, params, h).astype(np.float32)


class ChainWithoutRhs(DenseStep):
    def adjoint_chain(self, w0, W, U, params, h, G):
        return super().adjoint_chain(w0, W, U, params, h, None)  # the right-hand side dropped


class NotResidual(DenseStep):
    def forward(self, u, params, h):
        return super().forward(u, params, h) + 0.1 * u


@pytest.mark.parametrize("step,broken", [
    (WrongSignAdjoint(4, "tanh", BE), {"adjoint"}),
    (MissingBiasGrad(4, "tanh", BE), {"param_grad[b]"}),
    (MissingGroupTerm(4, 5, BE), {"param_grad[K2]"}),
    (BatchDependent(4, "tanh", BE), {"batched"}),
    (Nondeterministic(4, "tanh", BE), {"determinism"}),
    (WrongShape(4, "tanh", BE), {"shapes"}),
    (WrongDtype(4, "tanh", BE), {"shapes"}),
    (ChainWithoutRhs(4, "tanh", BE), {"chain"}),
], ids=["adjoint-sign", "bias-grad", "group-term", "batched", "determinism", "shapes", "dtype", "chain"])
def test_planted_bugs_are_caught(step, broken):
    report = check_step(step)
    assert not report.ok and exit_code(report) == 1
    assert broken <= failed(report), str(report)
    for name in broken:
        assert f"FAIL  {name}" in str(report)


def test_not_a_residual_update_fails_zero_step():
    report = check_step(NotResidual(4, "tanh", BE))
    assert "zero-step" in failed(report)


def test_raising_step_is_reported_not_raised():
    class Raises(DenseStep):
        def adjoint(self, u, lam, params, h):
            raise RuntimeError("boom")

    report = check_step(Raises(4, "tanh", BE))
    assert not report.ok and "boom" in str(report)


def test_run_prints_and_returns_exit_code():
    buf = io.StringIO()
    assert run(DenseStep(3, "tanh", BE), file=buf) == 0
    assert "PASS  adjoint" in buf.getvalue()
    buf = io.StringIO()
    assert run(WrongSignAdjoint(3, "tanh", BE), file=buf) == 1
    assert "FAIL  adjoint" in buf.getvalue()
