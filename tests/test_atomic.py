"""Atomic writes: the old file or the new one, never half of one, and no temporary file left behind."""

import os

import pytest

from hgsearch.store.atomic import atomic_open, atomic_path, atomic_write


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    dest = tmp_path / "frontier.csv"
    dest.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(dest) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert dest.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["frontier.csv"]


def test_successful_write_replaces_with_normal_permissions(tmp_path):
    dest = tmp_path / "sub" / "summary.json"  # the directory is created
    atomic_write(dest, lambda p: open(p, "w").write("{}\n"))
    assert dest.read_text() == "{}\n"
    assert dest.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's private 0600
    with atomic_path(dest, ".part") as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".summary.json.") and tmp.suffix == ".part"
        tmp.write_text("[]\n")
        assert dest.read_text() == "{}\n"  # readers see the old file until the block ends
    assert dest.read_text() == "[]\n" and len(list(dest.parent.iterdir())) == 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
