"""Parameters: initial values per group, named views of a flat vector (:class:`Params`) and the
layout of one process's block (:class:`ParamLayout`)."""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError


# -- initialisation ---------------------------------------------------------------------------------
def _fan_in(shape) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def _default_init(shape) -> str:
    return "normal" if len(shape) >= 2 else "zeros"


def draw_group(spec, rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    """One parameter group's initial values (float64 host array of ``shape``).

    ``spec``: ``"normal"`` draws N(0, scale²/fan_in) with fan_in = prod(shape[1:]); ``"zeros"``
    draws nothing; a callable ``(rng, shape) -> array`` is called and its result times ``scale``.
    """
    shape = tuple(int(s) for s in shape)
    if callable(spec):
        out = np.asarray(spec(rng, shape), dtype=np.float64)
        if out.shape != shape:
            raise UserError(f"param_init callable returned shape {out.shape}; expected {shape}")
        return out * scale if scale != 1.0 else out
    if spec == "normal":
        return rng.standard_normal(shape) * scale / math.sqrt(_fan_in(shape))
    if spec == "zeros":
        return np.zeros(shape)
    raise UserError(f"param_init must be 'normal', 'zeros' or a callable (rng, shape); got {spec!r}")


def _inits(obj, shapes):
    specs = getattr(obj, "param_init", None)
    if specs is None:
        return tuple(_default_init(s) for s in shapes)
    if isinstance(specs, str) or callable(specs):
        specs = (specs,) * len(shapes)
    specs = tuple(specs)
    if len(specs) != len(shapes):
        raise UserError(f"{type(obj).__name__}.param_init has {len(specs)} entries for {len(shapes)} groups")
    return specs


def _names(obj, shapes):
    names = getattr(obj, "param_names", None)
    if names is None:
        return tuple(f"p{i}" for i in range(len(shapes)))
    names = tuple(names)
    if len(names) != len(shapes):
        raise UserError(f"{type(obj).__name__}.param_names has {len(names)} names for {len(shapes)} groups")
    return names


# -- parameter layout -------------------------------------------------------------------------------
class Params:
    """Named views into a flat parameter vector; groups a process does not hold are None.

    ``P.<name>`` for every group name of the network (``open_K``, ``K``, ``W`` ...);
    :meth:`layers`, :meth:`opening` and :meth:`head` give the groups as the tuples the step,
    opening and head protocols take.
    """

    def __init__(self, groups: dict, open_names, layer_names, head_names, vector=None):
        self.__dict__["_g"] = groups
        self.__dict__["_names"] = (tuple(open_names), tuple(layer_names), tuple(head_names))
        self.__dict__["_vector"] = vector

    def __getattr__(self, name):
        g = self.__dict__.get("_g", {})
        if name in g:
            return g[name]
        if any(name in n for n in self.__dict__.get("_names", ())):
            return None
        raise AttributeError(name)

    def __setattr__(self, name, value):
        raise AttributeError("Params views are read-only attributes; write into them with P.name[...] = ...")

    def __getitem__(self, name):
        return self._g.get(name)

    def names(self):
        return tuple(self._g)

    def vector(self):
        """The flat vector (size,) these are views of (None when they were given as groups)."""
        return self._vector

    def layers(self):
        """The residual-layer parameters as the tuple the step protocol takes."""
        return tuple(self._g.get(n) for n in self._names[1])

    def opening(self):
        return tuple(self._g.get(n) for n in self._names[0])

    def head(self):
        return tuple(self._g.get(n) for n in self._names[2])


class ParamLayout:
    """Offsets of the parameter groups of layers [a, b) (+ opening, + head) in a flat vector.

    ``model`` is the :class:`~gpubraid.network.network.Network` whose groups are laid out.
    """

    def __init__(self, model, a: int, b: int, has_open: bool, has_class: bool):
        if not 0 <= a <= b <= model.layers:
            raise ValueError(f"layer block [{a}, {b}) outside [0, {model.layers})")
        self.model, self.a, self.b = model, a, b
        self.has_open, self.has_class = has_open, has_class
        L = b - a
        shapes = []
        if has_open:
            shapes += list(zip(model.open_names, model.opening.param_shapes))
        shapes += [(n, (L, *s)) for n, s in zip(model.layer_names, model.step.param_shapes)]
        if has_class:
            shapes += list(zip(model.head_names, model.head.param_shapes))
        self.shapes = {n: tuple(int(d) for d in s) for n, s in shapes}
        self.offsets = {}
        off = 0
        for name, shp in shapes:
            n = int(np.prod(shp))
            self.offsets[name] = (off, off + n)
            off += n
        self.size = off

    def views(self, vec) -> Params:
        """Named views of ``vec`` (shape (size,)); writing a view writes the vector."""
        if vec.shape != (self.size,):
            raise ValueError(f"parameter vector must have shape ({self.size},); got {tuple(vec.shape)}")
        groups = {name: vec[lo:hi].reshape(self.shapes[name]) for name, (lo, hi) in self.offsets.items()}
        m = self.model
        return Params(groups, m.open_names, m.layer_names, m.head_names, vec)
