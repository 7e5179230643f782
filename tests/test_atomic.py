"""asymcl.atomic: the one atomic writer (run directories, reports, sweeps, caches, downloads)."""

import json
import os
import stat

import pytest

from asymcl.atomic import atomic_open, atomic_write_json


def test_written_file_is_complete_and_has_a_plain_files_mode(tmp_path):
    atomic_write_json(tmp_path / "sub" / "m.json", {"a": 1})
    assert json.loads((tmp_path / "sub" / "m.json").read_text()) == {"a": 1}
    (tmp_path / "plain.txt").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "sub" / "m.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"old": True})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write('{"new": ')
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
