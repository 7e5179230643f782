"""Issue 24, part 1: user code registers a method, a dataset and a backbone, and every command uses
them like built-in ones (--plugin FILE_OR_MODULE, the asymcl.plugins entry points, sweep workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import asymcl
from asymcl import plugins
from asymcl.cli import main
from asymcl.data import spec as data_spec
from asymcl.errors import ConfigError
from asymcl.models import backbones
from asymcl.training import methods

SRC = Path(asymcl.__file__).resolve().parent.parent
REPO = SRC.parent

# A plugin as a user writes it: a loss subclass as a method, an .npy-pair dataset with every fact a
# dataset entry declares (its reader, augmentation, label-by-root, download, an extra run output),
# and a small encoder as a backbone.
PLUGIN = """
import numpy as np
import torch
from torch import nn

import asymcl
from asymcl.data.datasets import ArrayImageDataset
from asymcl.data.spec import SourceData
from asymcl.losses import AsymmetricFocalContrastiveLoss
from asymcl.training.methods import TWO_STAGE


class FocalSupCon(AsymmetricFocalContrastiveLoss):
    def __init__(self, gamma=2.0, **kwargs):
        super().__init__(gamma, 0.0, normalization="pairs", **kwargs)


asymcl.register_method(asymcl.Method(
    "plugin_focal", "PluginFocal", TWO_STAGE, "focal SupCon from a plugin",
    loss_factory=lambda loss, gather: FocalSupCon(loss.gamma, temperature=loss.temperature,
                                                  gather_distributed=gather),
    fixed={"eta": 0.0, "normalization": "pairs"}, free=("gamma", "temperature")))


def load_npy(spec):
    x = np.load(f"{spec.root}/x.npy")
    y = np.load(f"{spec.root}/y.npy")
    classes = ["low", "high"]
    return SourceData(classes=classes, pools={"train": ArrayImageDataset(x[:, :, :, None], y, classes)})


def fetch_npy(root, base_url=None, timeout=60.0):
    import pathlib
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], [60, 30]).astype(np.int64)
    x = (rng.integers(0, 60, (90, 8, 8)) + y[:, None, None] * 150).astype(np.uint8)
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", y)
    return [("x.npy", "downloaded"), ("y.npy", "downloaded")]


def count_file(*, split, official, ids, probs, classes):
    return {f"plugin_count_{split}.txt": f"{len(ids)} {','.join(classes)}".encode()}


asymcl.register_dataset(asymcl.DatasetInfo(
    "plugin_npy", "two .npy files", load_npy, augmentation="grey28", labelled_by_root=True,
    download=fetch_npy, outputs=count_file))


class TinyEncoder(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 12, 3, padding=1)
        self.feature_dim = 12

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


asymcl.register_backbone(asymcl.Backbone("plugin_tiny", TinyEncoder, "a one-conv encoder"))
"""

TINY = [
    "--set",
    "stage1.epochs=1",
    "--set",
    "stage2.epochs=1",
    "--set",
    "trainer.progress_bar=false",
    "--set",
    "model.proj_hidden_dim=16",
    "--set",
    "model.proj_dim=8",
    "--set",
    "stage1.batch_size=32",
]


@pytest.fixture(autouse=True)
def restore_registries():
    """Plugins change process-wide tables; every test here leaves them as it found them."""
    saved = (
        dict(methods.REGISTRY),
        dict(data_spec.DATASETS),
        dict(backbones.REGISTRY),
        dict(plugins._LOADED),
        dict(plugins._HANDOVER),
        plugins._ENTRY_POINTS_LOADED,
    )
    yield
    for table, old in zip(
        (methods.REGISTRY, data_spec.DATASETS, backbones.REGISTRY, plugins._LOADED, plugins._HANDOVER),
        saved[:-1],
        strict=True,
    ):
        table.clear()
        table.update(old)
    plugins._ENTRY_POINTS_LOADED = saved[-1]
    for name in [n for n in sys.modules if n.startswith("asymcl_plugin_")]:
        del sys.modules[name]


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _cli(*argv: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """The real command in a fresh process: nothing registered in this one leaks into it."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "ASYMCL_CACHE_DIR": str((cwd or REPO) / ".cache")}
    done = subprocess.run(
        [sys.executable, "-m", "asymcl", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_plugin_method_dataset_and_backbone_train_sweep_report_and_export(tmp_path, capsys):
    plugin = str(_write(tmp_path / "user", "my_plugin.py", PLUGIN))
    data = tmp_path / "data" / "npy-set"
    assert main(["data", "download", "plugin_npy", "--root", str(data), "--plugin", plugin]) == 0
    assert "downloaded  x.npy" in capsys.readouterr().out
    assert main(["data", "summary", "--dataset", "plugin_npy", "--root", str(data), "--plugin", plugin]) == 0
    assert "0 low" in capsys.readouterr().out

    run = tmp_path / "runs" / "one"
    common = [
        "--set",
        "method=plugin_focal",
        "--set",
        "data.dataset=plugin_npy",
        "--set",
        f"data.root={data}",
        "--set",
        "model.backbone=plugin_tiny",
        "--set",
        "loss.gamma=1.5",
        *TINY,
    ]
    assert main(["train", "--plugin", plugin, *common, "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["stages_complete"] == ["stage1", "stage2"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "plugin_focal"
    assert config["loss"] == {**config["loss"], "gamma": 1.5, "eta": 0.0, "normalization": "pairs"}  # fixed filled
    assert config["data"]["augment"] == "auto"
    assert (run / "plugin_count_test.txt").read_text().endswith(" low,high")  # the entry's extra output
    from asymcl.training.config import resolve_config
    from asymcl.training.modules import augmentation_preset

    assert augmentation_preset(resolve_config(config), "plugin_npy", 1) == "grey28"

    sweep = _write(
        tmp_path,
        "sweep.yaml",
        f"""
        name: plugin-sweep
        base: {json.dumps({"data.dataset": "plugin_npy", "data.root": str(data), "model.backbone": "plugin_tiny"})}
        grid:
          method: [plugin_focal, afcl]
          loss.gamma: [1.0, 2.0]
          loss.temperature: [0.1]
        """,
    )
    capsys.readouterr()
    assert main(["sweep", "--dry-run", "--config", str(sweep), "--plugin", plugin]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-1].startswith("4 runs into")
    assert [line for line in listed if line.startswith("pluginfocal")] == ["pluginfocal_g1_t0.1", "pluginfocal_g2_t0.1"]

    assert (
        main(
            [
                "report",
                str(tmp_path / "runs"),
                "--out",
                str(tmp_path / "report"),
                "--tsne-points",
                "50",
                "--plugin",
                plugin,
            ]
        )
        == 0
    )
    report = (tmp_path / "report" / "report.md").read_text()
    assert "PluginFocal" in report and "plugin_npy npy-set" in report  # display name; labelled by root

    assert main(["export", str(run), "--out", str(tmp_path / "model.onnx"), "--plugin", plugin]) == 0
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    probs = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 1, 8, 8), np.uint8)})[0]
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)

    # Without the plugin (a fresh process: this one has it loaded) the command names the problem in one line.
    done = _cli("train", *common, "--out", str(tmp_path / "runs" / "two"), cwd=tmp_path, check=False)
    assert done.returncode == 2
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "got 'plugin_focal'" in err and "--plugin" in err


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "import asymcl\nfrom asymcl.training.methods import REGISTRY\nasymcl.register_method(REGISTRY['afcl'])\n",
            "method name 'afcl' clashes with asymcl's built-in method",
        ),
        (
            "import asymcl\nasymcl.register_dataset(asymcl.DatasetInfo('digits', 'mine', lambda spec: None))\n",
            "dataset name 'digits' clashes with asymcl's built-in dataset",
        ),
        (
            "import asymcl, torch\nasymcl.register_backbone(asymcl.Backbone('resnet18', torch.nn.Identity))\n",
            "backbone name 'resnet18' clashes with asymcl's built-in backbone",
        ),
        (
            "import asymcl, torch\nasymcl.register_backbone(asymcl.Backbone('efficientnet_lite0', torch.nn.Identity))\n",
            "backbone name 'efficientnet_lite0' clashes",
        ),
        (
            "import not_a_real_package_xyz\n",
            "failed to import (ModuleNotFoundError: No module named 'not_a_real_package_xyz')",
        ),
        ("def broken(:\n", "failed to import (SyntaxError: "),
        ("raise RuntimeError('needs a GPU')\n", "failed to import (RuntimeError: needs a GPU); fix the plugin"),
    ],
)
def test_clashes_and_import_failures_are_one_line(tmp_path, capsys, body, expected):
    plugin = _write(tmp_path, "bad_plugin.py", body)
    assert main(["train", "--plugin", str(plugin), "--set", "stage1.epochs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"asymcl: error: plugin {plugin}") and expected in err


def test_missing_plugins_and_a_second_registration(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--plugin", "no_such_plugin_module"]) == 2
    assert "plugin no_such_plugin_module: no module named 'no_such_plugin_module'" in capsys.readouterr().err
    assert main(["sweep", "--config", "x.yaml", "--plugin", str(tmp_path / "gone.py")]) == 2
    assert "gone.py: no such file" in capsys.readouterr().err

    plugin = _write(
        tmp_path,
        "twice.py",
        "import asymcl\nfrom asymcl.training.methods import REGISTRY, TWO_STAGE\n"
        "asymcl.register_method(asymcl.Method('twice', 'Twice', TWO_STAGE, 'x', "
        "REGISTRY['afcl'].loss_factory))\n",
    )
    asymcl.load_plugins([str(plugin), str(plugin)])  # imported once: no clash with itself
    assert "twice" in methods.METHODS and plugins.loaded() == [str(plugin.resolve())]
    other = _write(tmp_path / "b", "twice.py", plugin.read_text())
    with pytest.raises(ConfigError, match="'twice' is already registered"):
        asymcl.load_plugins([str(other)])
    with pytest.raises(ConfigError, match="use lower-case letters"):
        asymcl.register_method(
            methods.Method("Bad Name", "B", methods.TWO_STAGE, "x", methods.REGISTRY["afcl"].loss_factory)
        )


def test_entry_point_plugins_load_in_every_command(tmp_path, monkeypatch, capsys):
    """An installed package names its plugin in the asymcl.plugins group; no --plugin needed."""
    site = tmp_path / "site"
    _write(
        site,
        "ep_plugin.py",
        "import asymcl\nfrom asymcl.training.methods import REGISTRY, TWO_STAGE\n"
        "def register():\n    asymcl.register_method(asymcl.Method('ep_method', 'EP', TWO_STAGE, 'x', "
        "REGISTRY['afcl'].loss_factory, free=('temperature',)))\n",
    )
    _write(site / "ep_plugin-1.0.dist-info", "METADATA", "Metadata-Version: 2.1\nName: ep-plugin\nVersion: 1.0\n")
    _write(site / "ep_plugin-1.0.dist-info", "entry_points.txt", "[asymcl.plugins]\nmine = ep_plugin:register\n")
    monkeypatch.syspath_prepend(str(site))
    plugins._ENTRY_POINTS_LOADED = False
    assert "ep_method" not in methods.METHODS
    sweep = _write(tmp_path, "s.yaml", "name: ep\ngrid:\n  method: [ep_method]\n  seed: [0, 1]\n")
    assert main(["sweep", "--dry-run", "--config", str(sweep)]) == 0
    assert "2 runs into" in capsys.readouterr().out and "ep_method" in methods.METHODS


def test_sweep_workers_load_the_same_plugins(tmp_path):
    """--workers 2 starts a second process; it must know the plugin's method, dataset and backbone."""
    plugin = _write(tmp_path / "user", "my_plugin.py", PLUGIN)
    data = tmp_path / "npy"
    _cli("data", "download", "plugin_npy", "--root", str(data), "--plugin", str(plugin), cwd=tmp_path)
    base = {
        "data.dataset": "plugin_npy",
        "data.root": str(data),
        "model.backbone": "plugin_tiny",
        "stage1.epochs": 1,
        "stage2.epochs": 1,
        "trainer.progress_bar": False,
        "model.proj_hidden_dim": 16,
        "model.proj_dim": 8,
        "loss.temperature": 0.1,
    }
    _write(
        tmp_path,
        "sweep.yaml",
        yaml.safe_dump({"name": "w", "base": base, "grid": {"method": ["plugin_focal"], "seed": [0, 1, 2, 3]}}),
    )
    # A relative plugin path: the workers get it absolute, so a worker in another folder finds it too.
    done = _cli(
        "sweep",
        "--config",
        "sweep.yaml",
        "--out",
        "out",
        "--workers",
        "2",
        "--plugin",
        "user/my_plugin.py",
        cwd=tmp_path,
    )
    assert "4/4 runs complete" in done.stdout
    assert not (tmp_path / "out" / "failures.log").exists()
    # Worker 2 resolves every point's config before it looks for work: without the plugin it would
    # stop there with "asymcl: error: method must be one of ..." and never print its summary.
    log = done.stdout + done.stderr
    assert "[worker 2] finished: 4/4 runs complete" in log and "error" not in log, log[-2000:]


def test_presets_do_not_grow_when_a_plugin_registers_a_method(tmp_path):
    """A preset lists its methods; a plugin's method joins a comparison only by name (--methods or
    the sweep file). Run in fresh processes: a preset module imported in this one would hide it."""
    (tmp_path / "fashion-mnist").mkdir()
    plugin = _write(tmp_path, "plugin.py", PLUGIN)
    for preset in ("fmnist-binary", "fmnist-lt"):
        argv = ["reproduce", preset, "--data", str(tmp_path / "fashion-mnist"), "--dry-run"]
        before = _cli(*argv, cwd=tmp_path).stdout.strip().splitlines()[-1]
        after = _cli(*argv, "--plugin", str(plugin), cwd=tmp_path).stdout.strip().splitlines()[-1]
        assert before.startswith("# ") and before == after, (preset, before, after)


def test_the_worked_example_trains_and_sweeps_as_the_docs_say(tmp_path, capsys):
    example = REPO / "examples" / "plugin_loss.py"
    assert len(example.read_text().splitlines()) < 30
    run = tmp_path / "run"
    # docs/extending.md: asymcl train --plugin examples/plugin_loss.py --set method=example_loss
    assert (
        main(
            [
                "train",
                "--plugin",
                str(example),
                "--set",
                "method=example_loss",
                "--set",
                "data.classes=[0,1]",
                *TINY,
                "--out",
                str(run),
            ]
        )
        == 0
    )
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["loss"]["eta"] == 0.0 and config["loss"]["normalization"] == "pairs"
    loss = methods.get_method("example_loss").build_loss(SimpleNamespace(gamma=3.0, temperature=0.2, memory_size=0))
    assert type(loss).__name__ == "FocalSupConLoss" and (loss.gamma, loss.eta, loss.normalization) == (
        3.0,
        0.0,
        "pairs",
    )
    capsys.readouterr()
    sweep = REPO / "examples" / "plugin_sweep.yaml"
    assert main(["sweep", "--plugin", str(example), "--config", str(sweep), "--dry-run"]) == 0
    names = capsys.readouterr().out.splitlines()
    # supcon: 3 seeds (gamma is not its hyperparameter); afcl and example_loss: 2 gammas x 3 seeds
    assert names[-1].startswith("15 runs into")
    assert sorted(name for name in names if name.startswith("exampleloss")) == [
        f"exampleloss_g{g}_s{s}" for g in (1, 2) for s in (0, 1, 2)
    ]
