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


def test_a_file_named_by_its_content_gets_its_name_inside_the_block(tmp_path):
    import hashlib

    from asymcl.atomic import atomic_file

    with atomic_file(tmp_path, prefix=".tmp-", suffix=".bin", file_mode=0o640) as pending:
        pending.handle.write(b"payload")
        pending.handle.flush()
        assert pending.temporary.name.startswith(".tmp-") and pending.temporary.name.endswith(".bin")
        pending.target = tmp_path / f"{hashlib.sha256(pending.temporary.read_bytes()).hexdigest()}.bin"
    assert pending.target.read_bytes() == b"payload"
    assert stat.S_IMODE(os.stat(pending.target).st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [pending.target.name]


def test_a_block_that_names_no_target_leaves_nothing(tmp_path):
    from asymcl.atomic import atomic_file

    with pytest.raises(ValueError, match="without setting the file's target"):
        with atomic_file(tmp_path) as pending:
            pending.handle.write(b"x")
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_takes_a_file_name_writes_the_temporary(tmp_path):
    from asymcl.atomic import atomic_file

    target = tmp_path / "model.bin"
    with atomic_file(tmp_path, target=target, prefix=".model.bin.") as pending:
        pending.temporary.write_bytes(b"by name")  # as torch.onnx.export does
    assert target.read_bytes() == b"by name" and sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
