"""nvcc compile check of every kernel instance: sm_80 and sm_90, no register spills.

Runs .ci/compile_kernels.py (the same script CI runs) without rewriting kernels/REGISTERS.md, and
checks that the committed table lists every instance.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpubraid.runtime import cuda

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "compile_kernels.py"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_kernels_compile_without_spills(tmp_path):
    table = tmp_path / "REGISTERS.md"
    res = subprocess.run([sys.executable, str(SCRIPT), "--arch", "80", "90", "--table", str(table)],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    text = table.read_text()
    for dt in ("float32", "float64"):
        for name in cuda.NAME_EXPRESSIONS[dt]:
            for arch in ("sm_80", "sm_90"):
                assert f"`void {name}` | {arch} |" in text, (name, arch)


def test_register_table_committed():
    """kernels/REGISTERS.md exists and covers every kernel instance."""
    text = (REPO / "kernels" / "REGISTERS.md").read_text()
    for dt in ("float32", "float64"):
        for name in cuda.NAME_EXPRESSIONS[dt]:
            assert f"`void {name}`" in text, name


def test_kernel_sources_found_without_package_data(monkeypatch):
    """A source checkout imported without the installed ``gpubraid._kernels`` finds <repo>/kernels."""
    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(cuda.resources, "files", missing)
    assert cuda.kernel_source_dir() == REPO / "kernels"
    assert (cuda.kernel_source_dir() / cuda.KERNEL_FILES[0]).is_file()
