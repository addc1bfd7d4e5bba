"""Atomic output files: never half-written, the permissions of a plain open(), and one line naming
the setting, the file and the bytes when an output cannot be written."""
import errno
import os

import pytest

from gpubraid.runtime import atomic


def test_a_new_file_gets_the_umask_permissions_and_a_replaced_one_keeps_its_own(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.write_atomic(str(tmp_path / "a"), lambda f: f.write("x"))
        assert (tmp_path / "a").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    (tmp_path / "b").write_text("old")
    os.chmod(tmp_path / "b", 0o604)
    atomic.write_atomic(str(tmp_path / "b"), lambda f: f.write("new"))
    assert (tmp_path / "b").read_text() == "new" and (tmp_path / "b").stat().st_mode & 0o777 == 0o604


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "f").write_text("old")

    def half(f):
        f.write("ne")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError):
        atomic.write_atomic(str(tmp_path / "f"), half)
    assert os.listdir(tmp_path) == ["f"] and (tmp_path / "f").read_text() == "old"


def test_write_output_names_the_setting_the_file_and_the_bytes(tmp_path, monkeypatch):
    def full(path, write, binary=False):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "write_atomic", full)
    path = str(tmp_path / "m.json")
    with pytest.raises(atomic.WriteError) as info:
        atomic.write_output("metrics", path, "x" * 2500, after="; nothing else")
    line = str(info.value)
    assert line.startswith(f"metrics: cannot write {path!r}: No space left on device (2.5 kB needed, ")
    assert line.endswith(" free); nothing else") and "\n" not in line


@pytest.mark.parametrize("n,binary,text", [(0, False, "0 bytes"), (999, False, "999 bytes"), (1000, False, "1.0 kB"),
                                           (12_345_678, False, "12.3 MB"), (4.1e9, False, "4.1 GB"),
                                           (7e15, False, "7000.0 TB"), (1000, True, "1000 bytes"),
                                           (1536, True, "1.5 KiB"), (3 * 2**30, True, "3.0 GiB")])
def test_format_bytes(n, binary, text):
    assert atomic.format_bytes(n, binary) == text
