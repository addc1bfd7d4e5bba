"""Model files: a trained network that can be rebuilt and used without its data set.

One safetensors file: one tensor per parameter group in the serial layout (``open_K``, ``K``
(N, C, C), ``b``, ``W``, ...) and, in the metadata, the network's description
(:meth:`gpubraid.network.network.Network.describe`, itself a spec :func:`~gpubraid.network.spec.network_from_spec`
rebuilds from), what the data looked like (input shape, task, classes) and the input
preprocessing of training (standardisation), so :meth:`TrainedModel.predict` on inputs in the
training data's own format gives what training saw.  Written atomically.

    model = gpubraid.load("peaks.safetensors")
    labels = model.predict(x)            # (n,) int64, or (n, n_out) values for regression
    proba = model.predict_proba(x)       # (n, n_classes)
"""
from __future__ import annotations

import json
import os

import numpy as np

from .. import __version__
from ..errors import UserError
from ..network.spec import network_from_spec
from ..objective.inference import Pipeline
from ..runtime.atomic import write_atomic
from ..runtime.backend import resolve_backend
from ..runtime.comm import Comm

FORMAT = 1


KEY = "gpubraid_model"


def save(path: str, model, theta_full, data_meta: dict, config: dict | None = None) -> None:
    """Write ``model`` with the full (serial-layout) parameter vector ``theta_full`` to ``path``.

    Args:
        data_meta: :meth:`gpubraid.data.dataset.Dataset.meta` of the training data (shape, task, classes,
            normalisation).
        config: the training settings, recorded for reference.
    """
    from safetensors.numpy import save as to_bytes

    views = model.layout().views(np.asarray(theta_full, dtype=np.float64))
    tensors = {name: np.ascontiguousarray(views[name]) for name in views.names()}
    data = {k: data_meta.get(k) for k in ("kind", "task", "in_shape", "n_classes", "n_out", "normalization")}
    meta = {"format": FORMAT, "version": __version__, "network": model.describe(), "data": data,
            "config": config}
    payload = to_bytes(tensors, metadata={KEY: json.dumps(meta, default=list)})
    write_atomic(path, lambda f: f.write(payload), binary=True)


def read(path: str) -> tuple[dict, dict]:
    """(tensors, meta) of a model file, host arrays; UserError for a missing or foreign file."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise UserError(f"model file {path!r} does not exist")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = json.loads((f.metadata() or {})[KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # not safetensors, not ours, damaged
        raise UserError(f"{path!r} is not a gpubraid model file ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path!r} has model format {meta.get('format')}; this gpubraid reads {FORMAT}")
    return tensors, meta


def parameters(model, tensors: dict, path: str) -> np.ndarray:
    """The full parameter vector of ``model`` from a file's tensors, checking names and shapes."""
    layout = model.layout()
    vec = np.zeros(layout.size)
    views = layout.views(vec)
    for name in views.names():
        if name not in tensors or tuple(tensors[name].shape) != tuple(views[name].shape):
            got = None if name not in tensors else tuple(tensors[name].shape)
            raise UserError(f"{path!r}: parameter {name} has shape {got}; this network needs "
                            f"{tuple(views[name].shape)}")
        views[name][...] = tensors[name]
    return vec


class TrainedModel:
    """A network with its trained parameters, for prediction on one process.

    Attributes:
        network: the rebuilt :class:`~gpubraid.network.network.Network`.
        theta: full parameter vector on the backend.
        meta: the file's metadata (``network``, ``data``, ``config``).
    """

    def __init__(self, network, theta, meta: dict):
        self.network, self.theta, self.meta = network, theta, meta
        self.task = meta["data"]["task"]
        self._pipeline = Pipeline(network, Comm.single(), np.array([0, network.layers]))

    def prepare(self, x) -> np.ndarray:
        """Inputs in the training data's own format -> what the network takes: checked, images
        (n, H, W) given their channel axis, standardised as in training.  Host float64."""
        from ..data.dataset import _features

        x = _features(x, "x")
        want = tuple(self.network.in_shape)
        if tuple(x.shape[1:]) != want:
            raise UserError(f"x must hold samples of shape {want}; got {tuple(x.shape[1:])}")
        norm = self.meta["data"].get("normalization")
        if norm:
            x = (x - np.asarray(norm["mean"])) / np.asarray(norm["std"])
        return x

    def outputs(self, x) -> np.ndarray:
        """The head's outputs W flatten(u_N) + c for inputs ``x``: (n, n_out) float64 on the host."""
        x = self.prepare(x)
        be = self.network.be
        P = self.network.layout().views(self.theta)
        _, _, out = self._pipeline.run(P, be.asarray(x), x.shape[0], outputs=True)
        return out

    def predict(self, x) -> np.ndarray:
        """Class labels (n,) int64 (classification), or predicted values (n, n_out) (regression)."""
        out = self.outputs(x)
        return out.argmax(axis=1).astype(np.int64) if self.task == "classification" else out

    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities (n, n_classes) (softmax of the outputs); classification only."""
        if self.task != "classification":
            raise UserError("predict_proba is for classifiers; this model does regression")
        z = self.outputs(x)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def load(path: str, backend=None) -> TrainedModel:
    """Rebuild the model in ``path`` (on ``backend``; default: NumPy float64)."""
    tensors, meta = read(path)
    be = backend if backend is not None else resolve_backend("numpy", "float64")
    network = network_from_spec(meta["data"], meta["network"], be)
    return TrainedModel(network, be.asarray(parameters(network, tensors, path)), meta)


def predict_file(model_path: str, data_path: str, array: str | None, out_path: str) -> tuple[int, str]:
    """Apply a model file to the inputs in a .npz and write ``labels`` + ``proba``
    (classification) or ``values`` (regression) to ``out_path`` atomically.

    ``array`` names the inputs; default ``x``, else ``x_val``, else ``x_train``.  Returns (number
    of samples, array used).
    """
    model = load(model_path)
    try:
        with np.load(data_path, allow_pickle=False) as f:
            names = list(f.files)
            name = array or next((n for n in ("x", "x_val", "x_train") if n in names), None)
            if name not in names:
                raise UserError(f"array: {data_path!r} has no array {name or 'x, x_val or x_train'}; "
                                f"it holds {', '.join(names) or 'nothing'}")
            x = f[name]
    except (OSError, ValueError) as exc:
        raise UserError(f"data: cannot read {data_path!r} as a .npz file: {exc}") from None
    if model.task == "classification":
        proba = model.predict_proba(x)
        result = {"labels": proba.argmax(axis=1).astype(np.int64), "proba": proba}
    else:
        result = {"values": model.predict(x)}
    write_atomic(out_path, lambda f: np.savez(f, **result), binary=True)
    return len(x), name
