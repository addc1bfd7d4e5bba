"""Model files: a trained network that can be rebuilt and used without its data set.

One safetensors file: one tensor per parameter group in the serial layout (``open_K``, ``K``
(N, C, C), ``b``, ``W``, ...) and, in the metadata, the network's description
(:meth:`gpubraid.network.network.Network.describe`, itself a spec :func:`~gpubraid.network.spec.network_from_spec`
rebuilds from), what the data looked like (input shape, task, classes) and the input
preprocessing of training (standardisation), so :meth:`TrainedModel.predict` on inputs in the
training data's own format gives what training saw.  Written atomically.

Loading a model file never imports or calls anything the file names: the built-in steps are built
by name; a user step or torch module (whose import path the file records) only from the step the
caller passes (``load(path, step=...)``, ``gpubraid predict --layer``), or by importing the
recorded path when the caller says ``trust=True`` (``--trust``); otherwise the file is refused
with one line naming that path.  The metadata is validated (types, shapes, sizes bounded by the
file's own arrays) before anything is built.

    model = gpubraid.load("peaks.safetensors")
    labels = model.predict(x)            # (n,) int64, or (n, n_out) values for regression
    proba = model.predict_proba(x)       # (n, n_classes)
"""
from __future__ import annotations

import io
import json

import numpy as np

from .. import __version__
from ..errors import UserError
from ..network.spec import check_spec, named_import, network_from_spec, refusal
from ..objective.inference import Pipeline
from ..runtime.atomic import write_output
from ..runtime.backend import Backend, resolve_backend
from ..runtime.comm import Comm
from .safefile import Unreadable
from .safefile import read as read_safetensors

FORMAT = 1


KEY = "gpubraid_model"


def save(path: str, model, theta_full, data_meta: dict, config: dict | None = None) -> None:
    """Write ``model`` with the full (serial-layout) parameter vector ``theta_full`` to ``path``.

    Args:
        data_meta: :meth:`gpubraid.data.dataset.Dataset.meta` of the training data (shape, task, classes,
            normalisation).
        config: the training settings, recorded for reference.

    Raises:
        WriteError: the file could not be written (whatever ``path`` held is left as it was).
    """
    from safetensors.numpy import save as to_bytes

    views = model.layout().views(np.asarray(theta_full, dtype=np.float64))
    tensors = {name: np.ascontiguousarray(views[name]) for name in views.names()}
    data = {k: data_meta.get(k) for k in ("kind", "task", "in_shape", "n_classes", "n_out", "normalization")}
    meta = {"format": FORMAT, "version": __version__, "network": model.describe(), "data": data,
            "config": config}
    payload = to_bytes(tensors, metadata={KEY: json.dumps(meta, default=list)})
    write_output("save", path, payload)


def read(path: str) -> tuple[dict, dict]:
    """(tensors, meta) of a model file, host arrays, its metadata validated (:func:`check_meta`);
    UserError for a missing, foreign, damaged or malformed file."""
    try:
        tensors, meta = read_safetensors(path, KEY, "model file")
    except Unreadable as exc:
        if "does not exist" in str(exc):
            raise
        raise UserError(f"{path!r} is not a gpubraid model file ({str(exc).split(': ', 1)[-1]})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path!r} has model format {meta.get('format')!r}; this gpubraid reads {FORMAT}")
    try:
        check_meta(meta, tensors)
    except UserError as exc:
        raise UserError(f"model file {path!r}: {exc}") from None
    return tensors, meta


def check_meta(meta: dict, tensors: dict) -> None:
    """UserError unless the metadata's network and data descriptions have the types and sizes a
    network is built from; every size is bounded by the number of values the file's arrays hold."""
    bound = max(1, sum(int(t.size) for t in tensors.values()))
    data, network = meta.get("data"), meta.get("network")
    check_spec(data, network, bound)
    norm = data.get("normalization")
    if norm is not None:
        try:
            mean, std = (np.asarray(norm[k], dtype=np.float64) for k in ("mean", "std"))
            shape = np.broadcast_shapes(mean.shape, std.shape, tuple(data["in_shape"]))
            ok = (shape == tuple(data["in_shape"]) and mean.size <= bound and np.isfinite(mean).all()
                  and np.isfinite(std).all() and (std > 0).all())
        except (TypeError, ValueError, KeyError):
            ok = False
        if not ok:
            raise UserError("normalization must hold finite 'mean' and positive 'std' of the input shape")


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


def load(path: str, backend=None, step=None, trust: bool = False) -> TrainedModel:
    """Rebuild the model in ``path`` (on ``backend``; default: NumPy float64).

    Args:
        backend: a :class:`~gpubraid.runtime.backend.Backend`, or its name (``"numpy"``, ``"cupy"``,
            ``"auto"``: float64).
        step: for a model whose step is not built in (a user step or torch module): the step
            object, its class or factory, or the ``torch.nn.Module`` class (called with the
            keyword arguments the file records).  Without it such a file is refused, unless
        trust: True: import the step's factory from the path the file names (importing runs code:
            only for files you trust).
    """
    if backend is None or isinstance(backend, str):
        be = resolve_backend(backend or "numpy", "float64")
    elif isinstance(backend, Backend):
        be = backend
    else:
        raise UserError(f"backend must be a Backend or one of numpy, cupy, auto; got {backend!r}")
    tensors, meta = read(path)
    network = network_from_spec(meta["data"], meta["network"], be, step=step, trust=trust,
                                source=f"model file {path!r}")
    return TrainedModel(network, be.asarray(parameters(network, tensors, path)), meta)


def init_step_spec(path: str, run_spec: dict | None, supplied: bool, trust: bool) -> tuple[dict, dict | None]:
    """(tensors, step spec) for ``--init path``: the run's own step spec ``run_spec`` when the
    file's step is built in or the caller ``supplied`` the step (``--layer``, ``Trainer(step=)``);
    the file's step spec when it names an import path and ``trust`` is set; else the one-line
    refusal (:func:`gpubraid.network.spec.refusal`)."""
    tensors, meta = read(path)
    file_spec = meta["network"]["step"]
    named = named_import(file_spec)
    if named is None or supplied:
        return tensors, run_spec
    if trust:
        return tensors, file_spec
    raise refusal(f"init file {path!r}", named)


def predict_file(model_path: str, data_path: str, array: str | None, out_path: str, step=None,
                 trust: bool = False) -> tuple[int, str]:
    """Apply a model file to the inputs in a .npz and write ``labels`` + ``proba``
    (classification) or ``values`` (regression) to ``out_path`` atomically (WriteError when it
    cannot be written).

    ``array`` names the inputs; default ``x``, else ``x_val``, else ``x_train``; ``step``,
    ``trust``: see :func:`load`.  Returns (number of samples, array used).
    """
    model = load(model_path, step=step, trust=trust)
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
    buffer = io.BytesIO()
    np.savez(buffer, **result)
    write_output("out", out_path, buffer.getvalue())
    return len(x), name
