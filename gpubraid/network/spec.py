"""Network specs: the JSON-able description a model file records, and the network built from it.

A spec read from a file is data, never code: the built-in steps (dense, conv) are built by name;
a spec naming an import path (a user step's or a torch module's ``factory``) is built only from a
step or factory the caller supplies, or, when the caller opts in with ``trust=True``, by
importing that path.  :func:`check_spec` validates a spec's types and sizes before anything is built.
"""
from __future__ import annotations

import inspect
import math
import numbers
import sys

from ..errors import UserError, check_positive_int
from ..runtime.backend import Backend
from .activations import ACTIVATIONS
from .imports import _import
from .network import Network, network_for_data
from .openings import ConvOpening, DenseOpening, IdentityOpening
from .steps import ConvStep, DenseStep

BUILT_IN = ("dense", "conv")


def named_import(spec) -> str | None:
    """The import path a step spec would import (its ``factory``), None for a built-in step."""
    if isinstance(spec, dict) and spec.get("name") in BUILT_IN:
        return None
    factory = spec.get("factory") if isinstance(spec, dict) else None
    return factory if isinstance(factory, str) else None


def refusal(source: str, path: str) -> UserError:
    """The one-line refusal to import ``path`` that ``source`` (a file) names."""
    return UserError(f"{source} names the import path {path!r} for its step; gpubraid imports nothing a "
                     f"file names: supply the step (gpubraid.load(..., step=...), --layer {path}) or trust "
                     f"the file (trust=True, --trust)")


def _is_step(obj) -> bool:
    """A built step object (not a class or factory): it has the step protocol's attributes."""
    return not isinstance(obj, type) and all(hasattr(obj, a) for a in ("forward", "param_shapes"))


def step_from_spec(spec: dict, in_shape, backend: Backend, step=None, trust: bool = False,
                   source: str = "the spec"):
    """A step from a JSON-able spec (as :meth:`Network.describe` records it under ``"step"``):

    ``{"name": "dense", "channels": C, "activation": a}``; ``{"name": "conv", "channels": C,
    "activation": a}`` (H, W from ``in_shape`` (C_in, H, W)); ``{"name": "torch", "factory":
    "module:Module", "kwargs": {...}, "state_shape": [...]}`` (a :class:`~gpubraid.network.torch_step.TorchStep`);
    any other name with ``"factory": "module:Class"`` and optional ``"kwargs"``: a user step built as
    ``Class(backend=backend, **kwargs)``.

    A spec naming a factory takes it from ``step``: a built step object (used as it is), a
    ``torch.nn.Module`` class or factory (torch specs), or a step class / factory (called as
    above); without ``step`` the factory's import path is imported only when ``trust`` is True,
    otherwise a UserError (:func:`refusal`, naming ``source``) is raised and nothing is imported.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
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
    path = named_import(spec)
    if step is None and path is None:
        raise UserError(f"step {name!r} is not built in (dense, conv, torch); give its 'factory' ('module:Class')")
    if step is not None and _is_step(step):
        return step
    what = "the torch step's factory" if name == "torch" else f"the factory of step {name!r}"
    if step is None and not trust:
        raise refusal(source, path)
    factory = step if step is not None else _import(path, what)
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise UserError(f"{source}: the step's kwargs must be a JSON object; got {kwargs!r}")
    if name == "torch":
        from .torch_step import TorchStep

        if "state_shape" not in spec:
            raise UserError("a torch step spec needs 'state_shape'")
        return TorchStep(factory, spec["state_shape"], backend, spec.get("module"), kwargs)
    _check_callable_as(factory, what if path in (None, name) else f"{what} ({path})", kwargs)
    return factory(backend=backend, **kwargs)


def _check_callable_as(factory, what: str, kwargs: dict) -> None:
    """UserError (one line) unless ``factory(backend=..., **kwargs)`` is a call its signature takes; a
    factory without a signature Python can read (some built-ins) is called as it is."""
    call = ", ".join(f"{k}=..." for k in ("backend", *kwargs))
    if not callable(factory):
        raise UserError(f"{what} is a {type(factory).__name__}, not a step class or factory called as "
                        f"({call})")
    try:
        inspect.signature(factory).bind(backend=None, **kwargs)
    except TypeError as exc:
        raise UserError(f"{what} cannot be called as ({call}): {exc}") from None
    except ValueError:
        pass


def layer_spec(cfg, meta: dict) -> dict:
    """The step spec (see :func:`step_from_spec`) of the settings ``cfg.layer``, ``cfg.channels``
    and ``cfg.activation`` for data described by ``meta``.

    ``cfg.layer``: ``dense`` or ``conv`` (None: by the data's kind); or ``module:attr`` naming a
    ``torch.nn.Module`` class (one layer's f, built with no arguments) or a step class or factory
    called as ``attr(backend=..., state_shape=S)``, with S = (channels,) for features and
    (channels, H, W) for images (H, W those of the inputs).  The user names ``module:attr``, so
    it is imported here.
    """
    name = cfg.layer or meta["kind"]
    if name in BUILT_IN:
        return {"name": name, "channels": cfg.channels, "activation": cfg.activation}
    in_shape = tuple(meta["in_shape"])
    state = [cfg.channels] if len(in_shape) == 1 else [cfg.channels, *in_shape[1:]]
    obj = _import(name, "layer")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, type) and issubclass(obj, torch.nn.Module):
        return {"name": "torch", "factory": name, "state_shape": state, "module": obj.__name__}
    return {"name": name, "factory": name, "kwargs": {"state_shape": state}}


def _size(name: str, value, bound: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= bound:
        raise UserError(f"{name} must be an integer in [1, {bound}]; got {value!r}")
    return int(value)


def check_spec(data: dict, spec: dict, bound: int) -> None:
    """UserError unless ``data`` (in_shape, task, n_classes / n_out) and the network ``spec`` have
    the types :func:`network_from_spec` takes and sizes at most ``bound`` (a file's own parameter
    count: no layer count, width, input size or class count of a network exceeds it)."""
    if not isinstance(data, dict) or not isinstance(spec, dict):
        raise UserError("the data and network descriptions must be JSON objects")
    shape = data.get("in_shape")
    if not isinstance(shape, (list, tuple)) or len(shape) not in (1, 3):
        raise UserError(f"in_shape must be a list of 1 or 3 sizes; got {shape!r}")
    if math.prod(_size("in_shape", s, bound) for s in shape) > bound:
        raise UserError(f"in_shape {list(shape)} has more values than the file has parameters ({bound})")
    task = data.get("task", "classification")
    if task not in ("classification", "regression"):
        raise UserError(f"task must be classification or regression; got {task!r}")
    _size("n_classes" if task == "classification" else "n_out",
          data.get("n_classes" if task == "classification" else "n_out"), bound)
    _size("layers", spec.get("layers"), bound)
    for key, low in (("final_time", 0.0), ("gamma_tik", 0.0), ("gamma_ddt", 0.0)):
        v = spec.get(key, 1.0 if key == "final_time" else 0.0)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < low:
            raise UserError(f"{key} must be a finite number >= 0; got {v!r}")
    step, opening = spec.get("step"), spec.get("opening") or {}
    if not isinstance(step, dict) or not isinstance(step.get("name"), str):
        raise UserError(f"step must be a JSON object with a 'name'; got {step!r}")
    if not isinstance(opening, dict):
        raise UserError(f"opening must be a JSON object; got {opening!r}")
    for where, act in (("step", step.get("activation")), ("opening", opening.get("activation"))):
        if step["name"] in BUILT_IN or where == "opening":
            if act is not None and act not in ACTIVATIONS:
                raise UserError(f"{where} activation must be one of {', '.join(ACTIVATIONS)}; got {act!r}")
    if step["name"] in BUILT_IN:
        _size("channels", step.get("channels"), bound)
    elif "state_shape" in step:
        ss = step["state_shape"]
        if not isinstance(ss, list) or not ss or math.prod(_size("state_shape", s, bound) for s in ss) > bound:
            raise UserError(f"state_shape must be a list of sizes; got {ss!r}")


def network_from_spec(meta: dict, spec: dict, backend: Backend, step=None, trust: bool = False,
                      source: str = "the spec") -> Network:
    """The network for a data set (``meta`` as :meth:`gpubraid.data.dataset.Dataset.meta`) from a spec.

    ``spec``: ``{"step": <step spec, see step_from_spec>, "layers": N, "final_time": T,
    "gamma_tik": 0, "gamma_ddt": 0, "opening": {"name": "dense" | "conv" | "identity",
    "activation": a}}`` (the last three optional; no opening name: :func:`default_opening`).
    :meth:`Network.describe` output is such a spec, so a described network can be rebuilt.
    For the built-in dense/conv steps the opening's activation defaults to the step's, which
    makes the network the :class:`ResNetODE` of the same settings, bit for bit.  ``step``,
    ``trust`` and ``source``: see :func:`step_from_spec`.
    """
    step_spec = spec.get("step")
    built = step_from_spec(step_spec, meta["in_shape"], backend, step, trust, source)
    ospec = spec.get("opening") or {}
    open_act = ospec.get("activation") or (
        step_spec.get("activation") if step_spec.get("name") in BUILT_IN else None) or "tanh"
    openings = {"dense": DenseOpening, "conv": ConvOpening}
    if ospec.get("name") in openings:
        opening = openings[ospec["name"]](open_act)
    elif ospec.get("name") == "identity":
        opening = IdentityOpening()
    elif ospec.get("name") is None:
        opening = None
    else:
        raise UserError(f"opening must be one of dense, conv, identity; got {ospec.get('name')!r}")
    net = network_for_data(meta, built, layers=spec.get("layers"), final_time=spec.get("final_time"),
                           backend=backend, gamma_tik=spec.get("gamma_tik", 0.0),
                           gamma_ddt=spec.get("gamma_ddt", 0.0), opening=opening, open_activation=open_act)
    net.step_spec = dict(step_spec)  # how to build the step again (model files)
    return net
