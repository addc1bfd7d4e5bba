"""README.md stays true: every python block runs, and the option table is the schema's."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    """Every python block of the README runs as written (each in a fresh namespace); the two
    "Your own network" examples pass the step self-test and make progress."""
    pytest.importorskip("torch")
    text = README.read_text()
    own = text[text.index("## Your own network"):]
    own = own[:own.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    own_blocks = re.findall(r"```python\n(.*?)```", own, re.S)
    assert len(own_blocks) >= 2 and all(b in blocks for b in own_blocks)
    for code in blocks:
        ns = {"__name__": "__readme_example__"}
        exec(compile(code, str(README), "exec"), ns)
        if code in own_blocks and "step" in ns:
            assert ns["check_step"](ns["step"]).ok
        if code in own_blocks and "result" in ns:
            assert ns["result"].objective < 0.5 * ns["result"].history[0]["objective"]


def test_readme_option_table_is_generated_from_the_schema():
    from gpubraid.cli import options

    assert options.options_markdown() in README.read_text()
