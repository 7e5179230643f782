"""``asymcl cache list|verify|prune|size`` on a generated cache (issue 25), pruning beside a job that
holds an entry, and group-readable shards."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asymcl.cli import main
from asymcl.data import cache_store
from asymcl.data.cache_admin import list_entries, parse_age
from asymcl.errors import DataError
from asymcl.models import SmallCNN

torch.set_num_threads(1)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env():
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def built(tmp_path):
    """A cache filled by `asymcl cache build` in a process that has exited: (cache dir, --set list)."""
    torch.manual_seed(3)
    torch.save(SmallCNN(1).state_dict(), tmp_path / "w.pth")
    cache = tmp_path / "cache"
    sets = [
        f"model.pretrained={tmp_path / 'w.pth'}",
        "model.finetune=frozen",
        f"data.cache_dir={cache}",
        "data.classes=[0,1,2]",
        "trainer.progress_bar=false",
        "data.cache_views=2",
    ]
    args = [a for s in sets for a in ("--set", s)]
    done = subprocess.run(
        [sys.executable, "-m", "asymcl", "cache", "build", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"feature caches ready in {cache}" in done.stderr
    return cache, args


def _cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


def test_list_size_and_verify(built, capsys):
    cache, _ = built
    code, out = _cli(capsys, "cache", "list", "--json", "--cache-dir", str(cache))
    entries = json.loads(out.out)
    assert code == 0 and len(entries) == 2
    train = next(e for e in entries if e["views"] == 2)
    evaluation = next(e for e in entries if e["views"] == 0)
    assert train["encoder"].startswith("small_cnn (") and train["dataset"] == "digits"
    assert train["image_size"] == "8x8x1"
    from asymcl.data import DataSpec, build_splits

    splits = build_splits(DataSpec(classes=[0, 1, 2])).splits
    assert train["images"] == len(splits["train"])
    assert evaluation["images"] == len(splits["val"]) + len(splits["test"])
    assert train["bytes"] == sum(p.stat().st_size for p in Path(train["path"]).iterdir())
    assert time.time() - train["last_used"] < 600
    code, out = _cli(capsys, "cache", "list", "--cache-dir", str(cache))
    assert "small_cnn" in out.out and "digits" in out.out and "2 entries" in out.out

    code, out = _cli(capsys, "cache", "size", "--cache-dir", str(cache))
    total = sum(e["bytes"] for e in entries)
    assert f"{total / 2**20:.1f} MB" in out.out and "decoded" in out.out

    # An entry written before info.json existed: the encoder from the key's repr, no dataset.
    (Path(evaluation["path"]) / "info.json").unlink()
    older = next(e for e in list_entries(cache) if e.key == evaluation["key"])
    assert (older.encoder, older.dataset, older.images) == ("SmallCNN", "?", evaluation["images"])

    code, out = _cli(capsys, "cache", "verify", "--cache-dir", str(cache))
    assert code == 0 and "0 damaged" in out.out
    shard = sorted(Path(train["path"]).glob("shard-*.npz"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])  # truncated
    code, out = _cli(capsys, "cache", "verify", "--cache-dir", str(cache))
    assert code == 1 and f"damaged: {shard}" in out.out and "1 damaged" in out.out


def test_prune_by_age_and_key_keeps_entries_in_use(built, capsys, tmp_path):
    cache, args = built
    entries = list_entries(cache)
    old, recent = entries
    month_ago = time.time() - 40 * 86400
    os.utime(Path(old.path) / cache_store.IN_USE, (month_ago, month_ago))
    code, out = _cli(capsys, "cache", "prune", "--older-than", "30d", "--dry-run", "--cache-dir", str(cache))
    assert f"would delete {old.key}" in out.out and recent.key not in out.out
    assert len(list_entries(cache)) == 2
    code, out = _cli(capsys, "cache", "prune", "--older-than", "30d", "--cache-dir", str(cache))
    assert f"deleted {old.key}" in out.out and [e.key for e in list_entries(cache)] == [recent.key]
    assert not list(Path(old.path).glob("shard-*"))

    # A job that has read the entry holds it until it exits: prune keeps it, then deletes it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from asymcl.data.cache_store import hold_in_use; "
            f"hold_in_use({recent.path!r}); print('held', flush=True); sys.stdin.read()",
        ],
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out = _cli(capsys, "cache", "prune", "--key", recent.key[:8], "--cache-dir", str(cache))
        assert f"kept {recent.key}: a running job holds it" in out.out
        assert list(Path(recent.path).glob("shard-*"))
    finally:
        holder.communicate("", timeout=60)
    code, out = _cli(capsys, "cache", "prune", "--key", recent.key, "--cache-dir", str(cache))
    assert f"deleted {recent.key}" in out.out and list_entries(cache) == []

    code, out = _cli(capsys, "cache", "prune", "--cache-dir", str(cache))
    assert code == 2 and "needs --older-than" in out.err
    code, out = _cli(capsys, "cache", "prune", "--key", "nosuchkey", "--cache-dir", str(cache))
    assert code == 2 and "no feature cache entry with key 'nosuchkey'" in out.err


def test_a_pruned_entry_is_extracted_again_by_the_next_build(built):
    cache, args = built
    for entry in list_entries(cache):
        assert main(["cache", "prune", "--key", entry.key, "--cache-dir", str(cache)]) == 0
    done = subprocess.run(
        [sys.executable, "-m", "asymcl", "cache", "build", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "extracting" in done.stderr
    assert len(list_entries(cache)) == 2


def test_parse_age():
    assert parse_age("30d") == 30 * 86400 and parse_age("90m") == 5400 and parse_age("2w") == 14 * 86400
    with pytest.raises(DataError, match="not an age"):
        parse_age("30 days")


def test_shards_are_group_readable_in_a_group_shared_folder(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2770)  # setgid, group rwx: a team's cache folder
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    from asymcl import atomic

    before = os.umask(0o077)  # a strict umask would otherwise leave 0600 shards
    atomic._plain_file_mode.cache_clear()  # read once per process
    try:
        arrays = np.zeros((1, 2), np.float16), np.zeros((1, 0, 2), np.float16)
        in_shared = cache_store.write_shard(shared, "k", ["a"], *arrays)
        in_private = cache_store.write_shard(private, "k", ["a"], *arrays)
    finally:
        os.umask(before)
        atomic._plain_file_mode.cache_clear()
    assert stat.S_IMODE(in_shared.stat().st_mode) & stat.S_IRGRP
    # An entry made in a group-shared cache folder is group-shared itself, whatever the umask.
    before = os.umask(0o077)
    try:
        cache_store.make_entry_folder(shared / "entry")
    finally:
        os.umask(before)
    mode = stat.S_IMODE((shared / "entry").stat().st_mode)
    assert mode & stat.S_IRWXG == stat.S_IRWXG and mode & stat.S_ISGID
    assert stat.S_IMODE(in_private.stat().st_mode) == 0o600
    assert cache_store.read_shard(in_shared, "k") is not None
