"""A fake runner and a fake extraction for whole ``asymcl levers`` ablations on synthetic runs (no
network, no data read): each run's validation UA is 0.6 + 0.01 x seed + ``effect(config)``, its test
UA 5 points lower; the extraction leaves one new cache entry per arm, as a real one leaves it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone

import yaml

from asymcl.data.cache_store import record_extraction
from asymcl.experiments import parallel, sweep


def install_fake_levers(monkeypatch, effect: Callable[[dict], float]) -> tuple[list[str], list[str]]:
    """Replace the sweep's runner and the feature-cache warm-up; returns (the arm of every run
    trained, in order; the label of every extraction)."""
    trained: list[str] = []
    extracted: list[str] = []

    def fake_run(config, run_dir):
        trained.append(run_dir.parent.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        val = 0.6 + 0.01 * config["seed"] + effect(config)
        final = {"val": {"ua": val, "wa": val + 0.1}, "test": {"ua": val - 0.05, "wa": val + 0.05}}
        if config["data"]["imbalance"]:  # the test set cut to the training profile, as a run writes it
            final["test_imbalanced"] = {"ua": val - 0.06, "wa": val + 0.2}
        (run_dir / "metrics.json").write_text(json.dumps({"status": "complete", "final": final, "history": {}}))
        return {}

    def fake_warm(configs, progress, label):
        # one new cache entry per arm, as an extraction leaves it (key.json, a shard, .in-use)
        from asymcl.data.cache_admin import cache_root

        entry = cache_root(None) / f"entry-{label.split()[-1]}"
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "key.json").write_text("{}")
        (entry / "shard-0.npz").write_bytes(b"x" * 1000)
        (entry / ".in-use").touch()
        progress(f"feature cache: extracted into {entry}")
        # as a real extraction records what computed it (asymcl.data.feature_cache)
        record_extraction(
            entry,
            {
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "images": 1,
                "precision": "fp32",
                "engine": "onnxruntime",
                "device": "cpu",
            },
        )
        extracted.append(label)
        return 1

    monkeypatch.setattr(sweep, "default_runner", lambda: fake_run)
    monkeypatch.setattr(parallel, "warm_feature_caches", fake_warm)
    return trained, extracted
