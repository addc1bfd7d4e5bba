"""The ``train`` options and the README's option table, rendered from the settings schema
(:mod:`gpubraid.training.config`): one option per field, its metavar, help and default text."""
from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from ..training.config import EXAMPLE_DEFAULTS, FIELDS, SWITCHES_OFF, SWITCHES_ON, TrainConfig, requirement


def choices(name: str) -> tuple:
    """The allowed values of a Literal field (empty for other fields)."""
    for tp in (FIELDS[name].annotation, *get_args(FIELDS[name].annotation)):
        if get_origin(tp) is Literal:
            return get_args(tp)
    return ()


def option_name(name: str) -> str:
    return ("--no-" if name in SWITCHES_OFF else "--") + name.replace("_", "-")


def metavar(name: str) -> str:
    extra = FIELDS[name].json_schema_extra or {}
    if name in extra.get("metavar", ""):
        return extra["metavar"]
    if choices(name):
        return "{" + ",".join(choices(name)) + "}"
    return extra.get("metavar", name.upper().replace("_", "-"))


def default_text(name: str) -> str:
    default = FIELDS[name].default
    if default is not None:
        return f"default: {default}"
    per = [f"{ex} {d[name]}" for ex, d in EXAMPLE_DEFAULTS.items() if d.get(name) is not None]
    return ("default None = per example: " + ", ".join(per)) if per else "default: None"


def help_text(name: str) -> str:
    text = FIELDS[name].description
    if name in SWITCHES_OFF + SWITCHES_ON:
        return text
    return f"{text}; {default_text(name)}"


def option_fields() -> list[str]:
    """The fields that are ``train`` options (``example`` is the positional argument)."""
    return [n for n in FIELDS if n != "example"]


def add_options(parser, parse) -> None:
    """Add one option per field to an argparse ``parser``; ``parse(name)`` makes its type function."""
    for name in option_fields():
        if name in SWITCHES_OFF + SWITCHES_ON:
            action = "store_false" if name in SWITCHES_OFF else "store_true"
            parser.add_argument(option_name(name), dest=name, action=action, help=help_text(name))
            continue
        parser.add_argument(option_name(name), dest=name, type=parse(name), metavar=metavar(name),
                            help=help_text(name).replace("%", "%%"))


def options_markdown() -> str:
    """The README's option table of ``gpubraid train``, generated from the schema."""
    rows = ["| option | meaning |", "|---|---|",
            "| `--config FILE` | TOML file of these settings (keys as below, `_` or `-`); options override it |"]
    for name in option_fields():
        opt = option_name(name) if name in SWITCHES_OFF + SWITCHES_ON else f"{option_name(name)} {metavar(name)}"
        rows.append(f"| `{opt}` | {help_text(name)} |")
    return "\n".join(rows)


def parse_value(name: str, text: str) -> Any:
    """One command-line string for field ``name``, converted and checked (ValueError otherwise)."""
    try:
        return getattr(TrainConfig.model_validate({name: text}), name)
    except ValidationError:
        raise ValueError(f"must be {requirement(name)}; got {text!r}") from None
