"""Protocol presets: valid configs for every preset/profile, clear errors, and the sweep -> report wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from asymcl.cli import main
from asymcl.errors import ConfigError
from asymcl.experiments.reproduce import (
    PRESET_METHODS,
    PRESETS,
    SEEDS,
    preset_budget,
    preset_seeds,
    preset_spec,
    reproduce,
)
from asymcl.experiments.sweep import default_resolver, expand, parse_spec, resolve_points


@pytest.fixture()
def data_paths(tmp_path):
    fmnist = tmp_path / "fashion-mnist"
    fmnist.mkdir()
    npz = tmp_path / "isic.npz"
    np.savez(npz, x=np.zeros((4, 28, 28, 3), np.uint8), y=np.arange(4) % 2)
    return {"fmnist-binary": fmnist, "fmnist-lt": fmnist, "isic2018": npz}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("profile", ["quick", "full"])
def test_every_preset_resolves_to_valid_run_configs(preset, profile, data_paths):
    spec = parse_spec(preset_spec(preset, data_paths[preset], profile))
    points = expand(spec)
    configs = resolve_points(spec, points, default_resolver())
    methods = {c["method"] for c in configs.values()}
    assert methods == set(PRESET_METHODS[profile])  # the profile's listed table
    seeds = {c["seed"] for c in configs.values()}
    assert len(seeds) >= 3
    # the same budget for every method, and every method's own search space used
    settings = {
        m: {
            json.dumps(
                {k: v for k, v in p.overrides.items() if k != "seed" and not k.startswith("data.")}, sort_keys=True
            )
            for p in points
            if p.overrides["method"] == m
        }
        for m in methods
    }
    assert {len(s) for s in settings.values()} == {preset_budget(preset, profile)}
    runs = {m: len([p for p in points if p.overrides["method"] == m]) for m in methods}
    assert len(set(runs.values())) == 1
    assert all(c["stage2"]["augment"] is False for c in configs.values())  # one classifier input for all
    assert all(c["data"]["root"] == str(data_paths[preset]) for c in configs.values())
    if preset == "fmnist-binary":
        assert all(c["data"]["classes"] == [0, 6] for c in configs.values())
        assert "binary:100" in {c["data"]["imbalance"] for c in configs.values()}
    if preset != "isic2018":  # Fashion-MNIST validates on a balanced set drawn before the profile
        assert all(c["data"]["val_per_class"] == 200 for c in configs.values())
    if profile == "quick":
        assert len(points) <= 42  # the CPU budget: see docs/usage-experiments.md


def test_preset_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        preset_spec("fmnist-lt", tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="IDX"):
        preset_spec("fmnist-binary", tmp_path / "file.txt")
    with pytest.raises(ConfigError, match=r"official layout\) or an .npz"):
        preset_spec("isic2018", tmp_path / "file.txt")
    with pytest.raises(ConfigError, match="unknown profile"):
        preset_spec("isic2018", tmp_path, "medium")


def test_reproduce_runs_the_sweep_then_writes_the_report(tmp_path, data_paths):
    from test_experiments_sweep import RecordingRunner

    runner = RecordingRunner()
    result = reproduce(
        "isic2018",
        data_paths["isic2018"],
        tmp_path / "out",
        runner=runner,
        progress=lambda _: None,
        command="asymcl reproduce isic2018 --data x",
    )
    assert len(runner.calls) == len(expand(parse_spec(preset_spec("isic2018", data_paths["isic2018"]))))
    written = yaml.safe_load(result.spec_path.read_text())
    assert written["grid"] == {"seed": SEEDS["quick"]} and set(written["settings"]) == set(PRESET_METHODS["quick"])
    text = result.report.markdown.read_text()
    assert "asymcl reproduce isic2018 --data x" in text and "| AFCL |" in text
    assert "Budget: 1 validation-scored setting(s) per method, the same for every row" in text
    table = json.loads(result.report.json.read_text())["settings"][0]["table"]
    assert {row["n_candidates"] for row in table.values()} == {preset_budget("isic2018", "quick")}
    assert (result.report.markdown.parent / "runs.csv").is_file()
    # again: nothing is re-run
    again = RecordingRunner()
    reproduce("isic2018", data_paths["isic2018"], tmp_path / "out", runner=again, progress=lambda _: None)
    assert again.calls == []


def test_cli_dry_run_prints_the_sweep(data_paths, capsys):
    assert main(["reproduce", "fmnist-binary", "--data", str(data_paths["fmnist-binary"]), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "binary:100" in out and "runs into" in out


@pytest.mark.parametrize("preset", ["isic2018", "fmnist-lt"])
def test_pretrained_profile_lists_its_methods_with_the_probe(preset, tmp_path, data_paths, monkeypatch):
    from asymcl.training import methods

    data = data_paths[preset]
    if preset == "isic2018":
        from data_fixtures import make_isic

        data = tmp_path / "isic"
        make_isic(data)
    before = len(expand(parse_spec(preset_spec(preset, data, "pretrained"))))
    # registering a method (a plugin's, say) changes no preset: a user adds it by name
    monkeypatch.setitem(
        methods.REGISTRY,
        "extra",
        methods.Method("extra", "Extra", methods.BASELINE, "test", search_space={"stage1.lr": (1e-3, 2e-3)}),
    )
    spec = parse_spec(preset_spec(preset, data, "pretrained"))
    assert len(expand(spec)) == before
    configs = resolve_points(spec, expand(spec), default_resolver())
    assert {c["method"] for c in configs.values()} == set(PRESET_METHODS["pretrained"]) and "probe" in PRESET_METHODS[
        "pretrained"
    ]
    assert {c["seed"] for c in configs.values()} == set(preset_seeds(preset, "pretrained"))
    for c in configs.values():
        backbone = {"isic2018": "efficientnet_lite2+efficientnet_lite0", "fmnist-lt": "efficientnet_lite0"}[preset]
        assert c["model"]["backbone"] == backbone and c["model"]["pretrained"] == "imagenet"
        assert c["model"]["finetune"] == "frozen" and c["data"]["cache"] == "auto"
        # ISIC: one draw of views for every seed (per-seed draws cost 23 min each); Fashion-MNIST: its own per seed
        assert c["data"]["cache_seed"] == (0 if preset == "isic2018" else None)
    if preset == "fmnist-lt":
        assert {c["data"]["imbalance"] for c in configs.values()} == {"exp:100"}
    else:
        assert {c["data"]["image_size"] for c in configs.values()} == {
            260
        }  # Lite2's native size (Lite0 gains from it too)
    with_extra = parse_spec(preset_spec(preset, data, "pretrained", methods=["probe", "extra", "afcl"], budget=2))
    assert {p.overrides["method"] for p in expand(with_extra)} == {"probe", "extra", "afcl"}
    with pytest.raises(ConfigError, match="profile pretrained has presets"):
        preset_spec("fmnist-binary", data_paths["fmnist-binary"], "pretrained")


def test_gpu_profile_resolves_for_the_gpu_script(tmp_path):
    """benchmarks/gpu/run.sh runs `reproduce isic2018|fmnist-lt --profile gpu`: both specs resolve
    (every point's config is valid) and ask for what the profile promises."""
    from asymcl.experiments.reproduce import preset_spec
    from asymcl.experiments.sweep import default_resolver, expand, parse_spec, resolve_points

    isic = tmp_path / "isic2018"
    isic.mkdir()
    fmnist = tmp_path / "fmnist"
    fmnist.mkdir()
    for preset, data in (("isic2018", isic), ("fmnist-lt", fmnist)):
        raw = preset_spec(preset, data, "gpu")
        assert raw["base"]["trainer.precision"] == "bf16-mixed" and raw["base"]["trainer.channels_last"]
        assert list(raw["settings"]) == ["ce", "la", "supcon", "afcl"] and len(raw["grid"]["seed"]) >= 2
        spec = parse_spec(raw)
        points = expand(spec)
        assert len(points) == 8
        resolve_points(spec, points, default_resolver())
    assert preset_spec("isic2018", isic, "gpu")["base"]["model.finetune"] == "all"
    with pytest.raises(ConfigError, match="profile gpu has presets"):
        preset_spec("fmnist-binary", fmnist, "gpu")


@pytest.mark.parametrize("preset, other", [("fmnist-lt", "isic"), ("isic2018", "fmnist")])
def test_the_other_datasets_folder_is_one_line_before_anything_runs(tmp_path, capsys, preset, other):
    from asymcl.cli import main
    from data_fixtures import make_fashion_mnist, make_isic

    if other == "isic":
        folder = tmp_path / "isic"
        make_isic(folder)
    else:
        folder = make_fashion_mnist(tmp_path / "fm")
    out = tmp_path / "out"
    assert main(["reproduce", preset, "--data", str(folder), "--profile", "pretrained", "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    expected = "Fashion-MNIST folder" if preset.startswith("fmnist") else "ISIC 2018 folder"
    assert err.count("\n") == 0 and f"--data {folder}: expected the {expected}" in err
    assert "Traceback" not in err and not out.exists()
