"""Distributed feature extraction (issue 25): `asymcl cache build` under torchrun with 2 CPU processes
(gloo) equals a 1-process build image for image, and each reuses what the other wrote."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from asymcl.data.cache_store import read_shard
from asymcl.models import SmallCNN
from asymcl.training.config import resolve_config
from asymcl.training.distributed_cache import build_caches

torch.set_num_threads(1)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _sets(tmp_path, cache):
    return {
        "model.pretrained": str(tmp_path / "w.pth"),
        "model.finetune": "frozen",
        "data.cache_dir": str(cache),
        "data.classes": [0, 1, 2],
        "data.cache_views": 2,
        "trainer.progress_bar": False,
    }


def _torchrun(sets: dict) -> str:
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "asymcl",
            "cache",
            "build",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _contents(cache: Path) -> dict:
    """{(entry, image fingerprint): (clean, views)} over every shard of the cache."""
    out = {}
    for entry in sorted(p for p in cache.iterdir() if p.is_dir()):
        for shard in entry.glob("shard-*.npz"):
            arrays = read_shard(shard, entry.name)
            assert arrays is not None, shard
            for row, fingerprint in enumerate(arrays["fingerprints"].tolist()):
                out[entry.name, fingerprint] = (arrays["clean"][row], arrays["views"][row])
    return out


def test_two_process_extraction_equals_one_process_and_each_reuses_the_other(tmp_path, capfd):
    torch.manual_seed(5)
    torch.save(SmallCNN(1).state_dict(), tmp_path / "w.pth")
    two, one = tmp_path / "two", tmp_path / "one"
    log = _torchrun(_sets(tmp_path, two))
    assert "(rank 0 of 2): extracting" in log and "(rank 1 of 2): extracting" in log
    assert not list(two.rglob(".tmp-*"))

    build_caches(resolve_config(_sets(tmp_path, one)))
    assert "extracting" in capfd.readouterr().err
    a, b = _contents(two), _contents(one)
    assert set(a) == set(b) and len(a) > 500
    for key in a:
        np.testing.assert_allclose(a[key][0].astype(np.float32), b[key][0].astype(np.float32), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(a[key][1].astype(np.float32), b[key][1].astype(np.float32), rtol=2e-2, atol=2e-2)

    # 1 process reuses what 2 wrote; 2 processes reuse what 1 wrote.
    build_caches(resolve_config(_sets(tmp_path, two)))
    assert "extracting" not in capfd.readouterr().err
    log = _torchrun(_sets(tmp_path, one))
    assert "extracting" not in log and "0 computed" in log

    # A rank killed mid-extraction leaves finished shards and a temporary file: the next build (on
    # any number of processes) removes the file and extracts only what is missing.
    entry = next(p for p in two.iterdir() if (p / "key.json").is_file() and 'views": 2' in (p / "key.json").read_text())
    shards = sorted(entry.glob("shard-*.npz"))
    lost = len(read_shard(shards[0], entry.name)["fingerprints"])
    shards[0].unlink()
    (entry / ".tmp-killed.npz").write_bytes(b"half a shard")
    log = _torchrun(_sets(tmp_path, two))
    assert f"{lost} computed" in log and not list(entry.glob(".tmp-*"))
    assert set(_contents(two)) == set(b)


KILLER = """
import os, sys
import asymcl.data.feature_cache as fc
fc.SHARD_IMAGES = 100
original = fc._write_shard
written = []

def write_then_die(directory, *args):
    if os.environ["RANK"] == "1" and written:
        (directory / ".tmp-half.npz").write_bytes(b"half a shard")  # what a killed write leaves
        os._exit(9)
    written.append(original(directory, *args))
    return written[-1]

fc._write_shard = write_then_die
from asymcl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_rank_killed_mid_extraction_loses_only_its_unfinished_part(tmp_path, capfd):
    torch.manual_seed(5)
    torch.save(SmallCNN(1).state_dict(), tmp_path / "w.pth")
    cache = tmp_path / "cache"
    sets = _sets(tmp_path, cache)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            "cache",
            "build",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode != 0
    entry = next(p for p in cache.iterdir() if (p / "key.json").is_file())
    assert list(entry.glob(".tmp-*"))  # the dead rank's half-written file ...
    kept = sum(len(read_shard(s, entry.name)["fingerprints"]) for s in entry.glob("shard-*.npz"))
    assert kept >= 100  # ... and every finished shard (rank 1's first, rank 0's)

    from asymcl.data import DataSpec, build_splits

    train = len(build_splits(DataSpec(classes=[0, 1, 2])).splits["train"])
    build_caches(resolve_config(sets))  # the next run, on one process: only what is missing
    log = capfd.readouterr().err
    assert f"extracting {train - kept} images x 3 (clean + views) into {entry}" in log
    assert not list(entry.glob(".tmp-*"))
    assert len({k for k in _contents(cache) if k[0] == entry.name}) == train


def test_lightning_launcher_with_trainer_devices_splits_the_extraction_too(tmp_path):
    torch.manual_seed(5)
    torch.save(SmallCNN(1).state_dict(), tmp_path / "w.pth")
    sets = {**_sets(tmp_path, tmp_path / "cache"), "trainer.devices": 2}
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RANK", None)
    done = subprocess.run(
        [sys.executable, "-m", "asymcl", "cache", "build", *args], env=env, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(rank 0 of 2): extracting" in done.stderr and "(rank 1 of 2): extracting" in done.stderr
    assert done.stderr.count("feature caches ready in") == 1  # reported once, by the first process
    assert len(_contents(tmp_path / "cache")) > 500
