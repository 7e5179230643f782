"""The run-directory lock: one writer per run, freed by the OS when the holder dies (kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asymcl.cli import main
from asymcl.errors import RunLockedError
from asymcl.training import runlock


def _holder_process(run_dir: Path) -> subprocess.Popen:
    """A separate process that takes the lock on ``run_dir`` and sleeps holding it."""
    code = textwrap.dedent(f"""
        import sys, time
        from asymcl.training.runlock import acquire
        lock = acquire({str(run_dir)!r})
        print("locked", flush=True)
        time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_until_the_holder_is_killed(tmp_path):
    run_dir = tmp_path / "run"
    proc = _holder_process(run_dir)
    try:
        with pytest.raises(RunLockedError, match=rf"is in use: pid {proc.pid} on "):
            runlock.acquire(run_dir)
        assert runlock.holder(run_dir)["pid"] == proc.pid
        # the probe did not take or break the lock
        with pytest.raises(RunLockedError):
            runlock.acquire(run_dir)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert runlock.holder(run_dir) is None  # the kernel dropped the dead process's lock
    with runlock.acquire(run_dir) as lock:
        assert runlock.holder(run_dir)["pid"] == os.getpid()
        with pytest.raises(RunLockedError):  # per open file: the same process is refused too
            runlock.acquire(run_dir)
    assert lock._fd is None and runlock.holder(run_dir) is None


def test_a_lock_on_a_new_directory_that_stays_empty_leaves_nothing(tmp_path):
    run_dir = tmp_path / "a" / "run"
    with runlock.acquire(run_dir):
        assert (run_dir / runlock.LOCK_NAME).is_file()
    assert not run_dir.exists()
    with runlock.acquire(run_dir):
        (run_dir / "config.yaml").write_text("seed: 0\n")
    assert (run_dir / "config.yaml").is_file()  # a directory with content is kept
    assert runlock.holder(tmp_path / "nothing") is None and not (tmp_path / "nothing").exists()


def test_train_on_a_locked_run_directory_is_one_line_exit_2(tmp_path, capsys):
    run_dir = tmp_path / "run"
    proc = _holder_process(run_dir)
    try:
        code = main(["train", "--out", str(run_dir), "--set", "stage1.epochs=1", "--set", "stage2.epochs=1"])
        err = capsys.readouterr().err.strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert code == 2 and err.count("\n") == 0 and f"pid {proc.pid}" in err and "Traceback" not in err
    assert [p.name for p in run_dir.iterdir()] == [runlock.LOCK_NAME]  # nothing was written
