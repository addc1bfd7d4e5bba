"""Heads u_N (B, *S), targets -> loss and ∂loss/∂u_N: softmax classifier and regression."""
from __future__ import annotations

import copy

import numpy as np

from ..errors import UserError, check_positive_int
from ..runtime import host
from ..runtime.backend import Backend


# -- heads ------------------------------------------------------------------------------------------
class Head:
    """Protocol of a head (output layer and loss) on u_N.

    Members (after :meth:`bind`): ``param_names``, ``param_shapes``, ``param_init``, ``task``,
    ``n_out``, and ``loss(uN, y, params, want_grad) -> (loss, n_correct, lamN, grads)``:
    uN (B, *state_shape); y the targets; ``loss`` a float (the mean over samples), ``n_correct`` an
    int (0 for regression), and when ``want_grad`` is true ``lamN`` = ∂loss/∂u_N (B, *state_shape)
    and ``grads`` a tuple of ∂loss/∂θ_head, else both None; ``lamN`` and ``grads`` are new arrays, the
    caller's to scale and overwrite (the pipeline carries λ down in ``lamN``).  ``predict(uN, params)``
    gives the outputs.
    """

    param_names = ("W", "c")
    param_init = ("normal", "zeros")

    def bind(self, state_shape, backend: Backend) -> "Head":
        h = copy.copy(self)
        h.state_shape = tuple(state_shape)
        h.state_size = int(np.prod(h.state_shape))
        h.be, h.xp = backend, backend.xp
        h.param_shapes = ((h.n_out, h.state_size), (h.n_out,))
        return h

    def predict(self, uN, params):
        """W flatten(u_N) + c: (B, *state_shape) -> (B, n_out)."""
        W, c = params
        return uN.reshape(uN.shape[0], self.state_size) @ W.T + c

    def _outputs(self, uN, params):
        """The outputs transposed, (n_out, B) in C order: the losses reduce over the n_out rows
        (elementwise passes over B) and over the contiguous B axis, where NumPy's reductions
        over a short trailing axis of (B, n_out) cost several times more."""
        W, c = params
        z = W @ uN.reshape(uN.shape[0], self.state_size).T
        z += c[:, None]
        return z

    def _grads(self, p, uN, W):
        """From p = ∂loss/∂outputs (n_out, B): λ_N (B, *state_shape) and (∂W, ∂c)."""
        flat = uN.reshape(uN.shape[0], self.state_size)
        return (p.T @ W).reshape(uN.shape), (p @ flat, p.sum(axis=1))


class Classifier(Head):
    """Softmax cross-entropy on logits W flatten(u_N) + c; targets integer labels (B,) in 0..n_classes−1.
    W (n_classes, prod(S)) ~ N(0, 1/prod(S)), c zeros."""

    task = "classification"

    def __init__(self, n_classes: int):
        self.n_classes = self.n_out = check_positive_int("n_classes", n_classes, 2)

    def loss(self, uN, y, params, want_grad=True):
        """On the host, for widths and class counts up to 64, one C call (:func:`gpubraid.runtime.host.softmax_xent`,
        the same formulas to round-off); else the NumPy formulas below."""
        fast = host.softmax_xent(uN.reshape(uN.shape[0], self.state_size), y, *params, want_grad)
        if fast is not NotImplemented:
            loss, correct, lam, grads = fast
            return loss / uN.shape[0], correct, None if lam is None else lam.reshape(uN.shape), grads
        xp = self.xp
        W, _ = params
        B = uN.shape[0]
        if y.shape != (B,) or y.dtype.kind not in "iu":
            raise UserError(f"classification targets must be integer labels of shape ({B},); got "
                            f"{tuple(y.shape)} {y.dtype}")
        if B and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise UserError(f"labels must lie in 0..{self.n_classes - 1}; got {int(y.min())}..{int(y.max())}")
        z = self._outputs(uN, params)                    # (n_classes, B)
        z -= z.max(axis=0)
        at_y = y * B + xp.arange(B)                      # flat indices of z[y_i, i]
        p = xp.exp(z)
        s = p.sum(axis=0)
        loss = float(xp.mean(xp.log(s) - z.ravel()[at_y])) if B else float("nan")
        correct = int((z.argmax(axis=0) == y).sum())
        if not want_grad:
            return loss, correct, None, None
        p /= s
        p.ravel()[at_y] -= 1
        p /= B
        return (loss, correct, *self._grads(p, uN, W))

    def describe(self):
        return {"name": "classifier", "task": self.task, "n_classes": self.n_classes}


class Regression(Head):
    """Mean squared error of W flatten(u_N) + c against float targets y (B, n_out):
    ℓ = mean over all B·n_out entries of (pred − y)².  W ~ N(0, 1/prod(S)), c zeros."""

    task = "regression"

    def __init__(self, n_out: int):
        self.n_out = check_positive_int("n_out", n_out)

    def loss(self, uN, y, params, want_grad=True):
        xp = self.xp
        W, _ = params
        B = uN.shape[0]
        if y.size != B * self.n_out:
            raise UserError(f"regression targets must have shape ({B}, {self.n_out}); got {tuple(y.shape)}")
        r = self._outputs(uN, params)                    # (n_out, B)
        r -= y.reshape(B, self.n_out).T
        loss = float(xp.mean(r * r)) if B else float("nan")
        if not want_grad:
            return loss, 0, None, None
        r *= 2.0 / max(r.size, 1)
        return (loss, 0, *self._grads(r, uN, W))

    def describe(self):
        return {"name": "regression", "task": self.task, "n_out": self.n_out}
