"""Error types shared by every module.

:class:`UserError` marks bad input (a parameter out of range, a missing file, a malformed config):
the CLI prints its one-line message and exits with status 2, without a traceback.
"""
import numbers


class UserError(ValueError):
    """Bad input from the user; the message names the parameter and what is allowed."""


class Diverged(ArithmeticError):
    """Training produced a non-finite or exploding objective; the message says when and where."""


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum``, or a UserError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{name} must be an integer >= {minimum}; got {value!r}")
    value = int(value)
    if value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}; got {value}")
    return value


def check_positive_float(name: str, value) -> float:
    """``value`` as a finite float > 0, or a UserError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a positive number; got {value!r}") from None
    if not (v > 0 and v < float("inf")):
        raise UserError(f"{name} must be a positive finite number; got {value!r}")
    return v
