"""Import paths of user steps: ``"module:qualname"`` recorded for a class, and the import of one."""
from __future__ import annotations

import importlib

from ..errors import UserError


def import_path(obj) -> str | None:
    """``"module:qualname"`` of a class or function importable by that name, else None."""
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not mod or not qual or "<" in qual or mod == "__main__":
        return None
    return f"{mod}:{qual}"


def _import(path: str, what: str):
    if not isinstance(path, str) or ":" not in path:
        raise UserError(f"{what} must be an import path 'module:name'; got {path!r}")
    mod, _, qual = path.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot import {what} {path!r}: {exc}") from None
    return obj
