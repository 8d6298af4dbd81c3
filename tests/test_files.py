import os
import stat

import pytest

from ldae._files import write_atomically


def test_written_file_has_the_permissions_of_a_plain_open(tmp_path):
    previous = os.umask(0o022)
    try:
        write_atomically(tmp_path / "sub" / "table.tsv", lambda temporary: temporary.write_text("a\n"))
    finally:
        os.umask(previous)
    written = tmp_path / "sub" / "table.tsv"
    assert written.read_text() == "a\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    def fail_halfway(temporary):
        temporary.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "model.ldae", fail_halfway)
    assert list(tmp_path.iterdir()) == []


def test_temporary_keeps_the_suffixes_so_writers_pick_the_format(tmp_path):
    seen = []
    write_atomically(tmp_path / "scan.nii.gz", lambda temporary: seen.append(temporary.name) or
                     temporary.write_bytes(b"x"))
    assert seen[0].endswith(".nii.gz") and seen[0].startswith(".")


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    # what a SIGKILL during write_atomically leaves: a hidden, half-written temporary
    stale = tmp_path / ".model.pt.k1ll3d_x.pt"
    stale.write_bytes(b"half a checkpoint")
    old = os.stat(stale).st_mtime - 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / ".model.pt.wr1t1ng.pt"  # a live writer's: recent, kept
    fresh.write_bytes(b"in progress")
    other = tmp_path / ".other.pt.k1ll3d_y.pt"  # another destination's: not ours to judge
    other.write_bytes(b"x")
    os.utime(other, (old, old))
    write_atomically(tmp_path / "model.pt", lambda temporary: temporary.write_bytes(b"whole"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".model.pt.wr1t1ng.pt", ".other.pt.k1ll3d_y.pt", "model.pt"]
