"""Network specs: the JSON-able description a model file records, and the network built from it."""
from __future__ import annotations

import sys

from ..errors import UserError, check_positive_int
from ..runtime.backend import Backend
from .imports import _import
from .network import Network, network_for_data
from .openings import ConvOpening, DenseOpening, IdentityOpening
from .steps import ConvStep, DenseStep


def step_from_spec(spec: dict, in_shape, backend: Backend):
    """A step from a JSON-able spec (as :meth:`Network.describe` records it under ``"step"``):

    ``{"name": "dense", "channels": C, "activation": a}``; ``{"name": "conv", "channels": C,
    "activation": a}`` (H, W from ``in_shape`` (C_in, H, W)); ``{"name": "torch", "factory":
    "module:Module", "kwargs": {...}, "state_shape": [...]}`` (a :class:`~gpubraid.network.torch_step.TorchStep`);
    any other name with ``"factory": "module:Class"`` and optional ``"kwargs"``: a user step built as
    ``Class(backend=backend, **kwargs)``.
    """
    if not isinstance(spec, dict) or "name" not in spec:
        raise UserError(f"a step spec must be a dict with a 'name'; got {spec!r}")
    name = spec["name"]
    if name == "dense":
        return DenseStep(check_positive_int("channels", spec.get("channels")), spec.get("activation", "tanh"), backend)
    if name == "conv":
        if len(tuple(in_shape)) != 3:
            raise UserError(f"conv steps take image inputs (C_in, H, W); got {tuple(in_shape)}")
        _, H, W = in_shape
        return ConvStep(check_positive_int("channels", spec.get("channels")), H, W,
                        spec.get("activation", "tanh"), backend)
    if name == "torch":
        from .torch_step import TorchStep

        factory = _import(spec.get("factory"), "the torch step's factory")
        if "state_shape" not in spec:
            raise UserError("a torch step spec needs 'state_shape'")
        return TorchStep(factory, spec["state_shape"], backend, spec.get("module"), spec.get("kwargs"))
    if "factory" not in spec:
        raise UserError(f"step {name!r} is not built in (dense, conv, torch); give its 'factory' ('module:Class')")
    factory = _import(spec["factory"], f"the factory of step {name!r}")
    return factory(backend=backend, **dict(spec.get("kwargs") or {}))


def layer_spec(cfg, meta: dict) -> dict:
    """The step spec (see :func:`step_from_spec`) of the settings ``cfg.layer``, ``cfg.channels``
    and ``cfg.activation`` for data described by ``meta``.

    ``cfg.layer``: ``dense`` or ``conv`` (None: by the data's kind); or ``module:attr`` naming a
    ``torch.nn.Module`` class (one layer's f, built with no arguments) or a step class or factory
    called as ``attr(backend=..., state_shape=S)``, with S = (channels,) for features and
    (channels, H, W) for images (H, W those of the inputs).
    """
    name = cfg.layer or meta["kind"]
    if name in ("dense", "conv"):
        return {"name": name, "channels": cfg.channels, "activation": cfg.activation}
    in_shape = tuple(meta["in_shape"])
    state = [cfg.channels] if len(in_shape) == 1 else [cfg.channels, *in_shape[1:]]
    obj = _import(name, "layer")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        return {"name": "torch", "factory": name, "state_shape": state, "module": obj.__name__}
    return {"name": name, "factory": name, "kwargs": {"state_shape": state}}


def network_from_spec(meta: dict, spec: dict, backend: Backend) -> Network:
    """The network for a data set (``meta`` as :meth:`gpubraid.data.dataset.Dataset.meta`) from a spec.

    ``spec``: ``{"step": <step spec, see step_from_spec>, "layers": N, "final_time": T,
    "gamma_tik": 0, "gamma_ddt": 0, "opening": {"name": "dense" | "conv" | "identity",
    "activation": a}}`` (the last three optional; no opening name: :func:`default_opening`).
    :meth:`Network.describe` output is such a spec, so a described network can be rebuilt.
    For the built-in dense/conv steps the opening's activation defaults to the step's, which
    makes the network the :class:`ResNetODE` of the same settings, bit for bit.
    """
    step_spec = spec.get("step")
    step = step_from_spec(step_spec, meta["in_shape"], backend)
    ospec = spec.get("opening") or {}
    open_act = ospec.get("activation") or (
        step_spec.get("activation") if step_spec.get("name") in ("dense", "conv") else None) or "tanh"
    openings = {"dense": DenseOpening, "conv": ConvOpening}
    if ospec.get("name") in openings:
        opening = openings[ospec["name"]](open_act)
    elif ospec.get("name") == "identity":
        opening = IdentityOpening()
    elif ospec.get("name") is None:
        opening = None
    else:
        raise UserError(f"opening must be one of dense, conv, identity; got {ospec.get('name')!r}")
    net = network_for_data(meta, step, layers=spec.get("layers"), final_time=spec.get("final_time"),
                           backend=backend, gamma_tik=spec.get("gamma_tik", 0.0),
                           gamma_ddt=spec.get("gamma_ddt", 0.0), opening=opening, open_activation=open_act)
    net.step_spec = dict(step_spec)  # how to build the step again (model files)
    return net
