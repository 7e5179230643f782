"""A whole run: data -> stage 1 -> stage 2 (or the ce baseline) -> test metrics and predictions.

``run(config, out_dir)`` is restartable. The run directory (docs/architecture.md, layer 3)::

    config.yaml        the resolved config
    versions.json      python, torch, lightning, asymcl, platform, git commit
    metrics.json       status, final metrics per split, per-epoch history and best epoch per stage
    checkpoints/{stage}/last.ckpt, best.ckpt     stage in stage1, stage2 (two-stage) or baseline (ce)
    predictions.csv    split,index,label,pred,prob_<class>... for the test splits
    embeddings.npz     encoder features of the test splits (``{split}_features``, ``_labels``, ``_preds``)

Resuming: a checkpoint is written at the end of every epoch. Run again with the same config and
out_dir after an interruption and each finished stage is skipped, the unfinished one restarts
from its ``last.ckpt`` (the interrupted epoch is re-run from its start), and because batches and
augmentations are seeded per (seed, stage, epoch) the result equals an uninterrupted run's. A
run whose metrics.json says ``complete`` is returned as it is. A run directory holding another
config is an error.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml

from asymcl.errors import CheckpointError, ConfigError
from asymcl.training.checkpoints import (
    SafeCheckpointIO,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_yaml,
    load_module_weights,
)
from asymcl.training.config import config_differences, resolve_config
from asymcl.training.runlock import locked_run

TWO_STAGE = ("stage1", "stage2")
BASELINE = ("baseline",)


def stages_for(config: dict) -> tuple[str, ...]:
    return BASELINE if config["method"] == "ce" else TWO_STAGE


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def versions_info() -> dict[str, Any]:
    import lightning

    import asymcl

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "asymcl": asymcl.__version__,
        "platform": platform.platform(),
        "git_commit": None,
    }
    try:
        repo = Path(asymcl.__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            info["git_commit"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def read_metrics(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:  # only possible if edited by hand: writes are atomic
        raise CheckpointError(f"{path} is not valid JSON ({exc}); delete it to recompute") from exc


def _empty_metrics(config: dict, classes: list[str] | None = None) -> dict:
    return {"status": "running", "method": config["method"], "classes": classes, "final": {},
            "history": {}, "best": {}, "stages_complete": []}


def _check_run_dir(config: dict, run_dir: Path) -> dict | None:
    """Check the run directory without writing to it. Returns the finished metrics if there is
    nothing to do; raises :class:`ConfigError` if it holds another config or something else."""
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        try:
            previous = resolve_config(yaml.safe_load(config_path.read_text()) or {})
        except (ConfigError, yaml.YAMLError) as exc:
            raise ConfigError(f"{config_path} cannot be read as a run config ({exc}); "
                              "choose another output directory") from exc
        differences = config_differences(previous, config)
        if differences:
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({'; '.join(differences[:5])}"
                f"{' ...' if len(differences) > 5 else ''}); use another --out, or delete that "
                "directory to start over"
            )
        metrics = read_metrics(run_dir)
        if metrics and metrics.get("status") == "complete":
            return metrics
        return None
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output directory {run_dir} is a file; choose a new or empty directory")
    if run_dir.exists() and any(p for p in run_dir.iterdir() if not p.name.startswith(".")):
        raise ConfigError(f"{run_dir} is not empty and holds no run (no config.yaml); "
                          "choose a new or empty output directory")
    return None


def _init_run_dir(config: dict, run_dir: Path) -> None:
    """Write config.yaml and versions.json into a new run directory (main process only)."""
    if _is_main_process() and not (run_dir / "config.yaml").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "versions.json", versions_info())
        atomic_write_yaml(run_dir / "config.yaml", config)


def _trainer_kwargs(config: dict) -> dict[str, Any]:
    trainer_cfg = config["trainer"]
    deterministic: bool | str = trainer_cfg["deterministic"]
    if deterministic and trainer_cfg["accelerator"] != "cpu":
        deterministic = "warn"  # some CUDA kernels (e.g. in augmentation) have no deterministic form
    return {"accelerator": trainer_cfg["accelerator"], "devices": trainer_cfg["devices"],
            "strategy": trainer_cfg["strategy"], "precision": trainer_cfg["precision"],
            "deterministic": deterministic}


def _check_trainer_options(config: dict) -> None:
    """Let Lightning judge the device options now (e.g. accelerator gpu on a machine without one),
    so that they fail as a config error before anything is written or trained."""
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        pl.Trainer(**_trainer_kwargs(config), logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        trainer_cfg = config["trainer"]
        raise ConfigError(
            f"trainer options accelerator={trainer_cfg['accelerator']!r}, devices={trainer_cfg['devices']!r}, "
            f"strategy={trainer_cfg['strategy']!r}, precision={trainer_cfg['precision']!r} cannot be "
            f"used here: {str(exc).splitlines()[0]} (trainer.accelerator cpu works everywhere)"
        ) from None


def data_spec(config: dict):
    from asymcl.data import DataSpec

    data = config["data"]
    return DataSpec(dataset=data["dataset"], root=data["root"], imbalance=data["imbalance"],
                    classes=data["classes"], val_fraction=data["val_fraction"],
                    test_fraction=data["test_fraction"], seed=config["seed"],
                    image_size=data["image_size"], csv_path_column=data["csv_path_column"],
                    csv_label_column=data["csv_label_column"])


class _RunData:
    """The splits, loaded once (and held as tensors when ``data.in_memory``)."""

    def __init__(self, config: dict):
        from asymcl.data import build_splits

        self.splits = build_splits(data_spec(config))
        self.classes = list(self.splits.classes)
        self.num_classes = len(self.classes)
        train = self.splits["train"]
        self.channels, height, width = train.image_shape
        self.image_hw = (height, width)
        self.dataset_name = config["data"]["dataset"]
        self.class_counts = torch.as_tensor(np.bincount(train.targets, minlength=self.num_classes))
        self.in_memory = config["data"]["in_memory"]
        self.cache = {name: ds.load_all() for name, ds in self.splits.splits.items()} if self.in_memory else {}

    def loader(self, split: str, batch_size: int, *, train: bool, seed: int, sampler: str = "random",
               num_workers: int = 0, rank: int = 0, world_size: int = 1):
        from asymcl.training.data_module import make_loader

        return make_loader(self.splits[split], batch_size, train=train, seed=seed, sampler=sampler,
                           in_memory=self.in_memory, num_workers=num_workers, rank=rank,
                           world_size=world_size, cached=self.cache.get(split))


def _make_datamodule(data: _RunData, config: dict, stage: str):
    import lightning.pytorch as pl

    from asymcl.training.data_module import to_float_images

    section = config["stage2"] if stage == "stage2" else config["stage1"]
    sampler = "random" if stage == "stage1" else config["stage2"]["sampler"]
    seed = config["seed"] * 100 + {"stage1": 1, "stage2": 2, "baseline": 3}[stage]
    num_workers = config["data"]["num_workers"]

    class SplitsDataModule(pl.LightningDataModule):
        def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
            images, labels = batch
            return to_float_images(images), labels

        def _ranks(self) -> dict[str, int]:
            return {"rank": self.trainer.global_rank, "world_size": self.trainer.world_size}

        def train_dataloader(self):
            return data.loader("train", section["batch_size"], train=True, seed=seed, sampler=sampler,
                               num_workers=num_workers, **self._ranks())

        def val_dataloader(self):
            return data.loader("val", section["batch_size"], train=False, seed=seed,
                               num_workers=num_workers, **self._ranks())

        def probe_dataloader(self):
            """The un-augmented training split, for stage 1's nearest-class-mean probe."""
            return data.loader("train", section["batch_size"], train=False, seed=seed,
                               num_workers=num_workers, **self._ranks())

    return SplitsDataModule()


def _history_callback(stage: str, on_record: Callable[[str, list, dict], None]):
    from lightning.pytorch.callbacks import Callback

    class HistoryCallback(Callback):
        """Per-epoch record of train loss and validation metrics, saved inside the checkpoints so
        that a resumed stage keeps the history of the epochs before the interruption."""

        def __init__(self):
            self.entries: list[dict] = []
            self.best: dict = {}

        @property
        def state_key(self) -> str:
            return f"HistoryCallback[{stage}]"

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            val = pl_module.last_val_metrics
            entry = {
                "epoch": int(trainer.current_epoch),
                "train_loss": pl_module.last_train_loss,
                "val_wa": val["wa"],
                "val_ua": val["ua"],
                "val_macro_f1": val["macro_f1"],
                "val_per_class_recall": val["per_class_recall"],
            }
            self.entries = [e for e in self.entries if e["epoch"] != entry["epoch"]] + [entry]
            if not self.best or entry["val_ua"] > self.best["val_ua"]:
                self.best = {"epoch": entry["epoch"], "val_ua": entry["val_ua"]}
            on_record(stage, self.entries, self.best)

        def state_dict(self) -> dict:
            return {"entries": self.entries, "best": self.best}

        def load_state_dict(self, state_dict: dict) -> None:
            self.entries = list(state_dict["entries"])
            self.best = dict(state_dict["best"])

    return HistoryCallback()


def _drop_advertising(record: logging.LogRecord) -> bool:
    """Lightning 2.6 logs a "Tip" to install its cloud products on every Trainer: noise in our output."""
    return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip")


def _quiet_lightning(quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if _drop_advertising not in logger.filters:
            logger.addFilter(_drop_advertising)


def _build_module(stage: str, config: dict, data: _RunData, *, gather: bool = False,
                  load_pretrained: bool = True):
    from asymcl.training.modules import (
        ContrastiveModule,
        EndToEndModule,
        LinearProbeModule,
        augmentation_preset,
    )

    preset = augmentation_preset(config, data.dataset_name, data.channels)
    common = (config, data.num_classes, data.channels, data.image_hw, preset)
    if stage == "stage1":
        return ContrastiveModule(*common, gather_distributed=gather, load_pretrained=load_pretrained)
    if stage == "stage2":
        return LinearProbeModule(*common, class_counts=data.class_counts)
    return EndToEndModule(*common, class_counts=data.class_counts, load_pretrained=load_pretrained)


def _train_stage(stage: str, config: dict, data: _RunData, run_dir: Path,
                 on_record: Callable, callbacks: Sequence, verbose: bool) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.trainer.states import TrainerStatus

    from asymcl.training.modules import STAGE_OFFSETS

    trainer_cfg = config["trainer"]
    epochs = (config["stage2"] if stage == "stage2" else config["stage1"])["epochs"]
    ckpt_dir = run_dir / "checkpoints" / stage
    last = ckpt_dir / "last.ckpt"
    best_checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/ua", mode="max",
                                      save_top_k=1, save_last=False, enable_version_counter=False,
                                      auto_insert_metric_name=False)
    # Not save_last=True: Lightning 2.6 then writes last.ckpt only in epochs that improve the best,
    # so a resume went back to the best epoch and redid every epoch since. A second, unmonitored
    # callback rewrites last.ckpt after every epoch. It comes after the best one, so the state it
    # saves already holds this epoch's best score.
    last_checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                      every_n_epochs=1, enable_version_counter=False,
                                      auto_insert_metric_name=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        **_trainer_kwargs(config),
        enable_progress_bar=trainer_cfg["progress_bar"],
        enable_model_summary=False,
        logger=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=1,
        default_root_dir=str(run_dir),
        plugins=[SafeCheckpointIO()],
        callbacks=[_history_callback(stage, on_record), best_checkpoint, last_checkpoint, *callbacks],
    )
    # The same initial weights on every attempt of this stage, whatever ran before it.
    pl.seed_everything(config["seed"] * 100 + STAGE_OFFSETS[stage], workers=True, verbose=False)
    module = _build_module(stage, config, data, gather=trainer.world_size > 1)
    if stage == "stage2":
        load_module_weights(module.encoder, run_dir / "checkpoints" / "stage1" / "best.ckpt", prefix="encoder.")
    resume = last if last.is_file() else None
    if resume is not None:
        from asymcl.training.checkpoints import load_checkpoint

        load_checkpoint(resume)  # a corrupt last.ckpt: a clear CheckpointError before Lightning starts
    if verbose:
        what = f"resuming from {resume}" if resume else f"{epochs} epoch(s)"
        print(f"[asymcl] {stage}: {what}", file=sys.stderr)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Lightning 2.6 on torch >= 2.10 warns about its own use of a torch API once per dataloader;
    # nothing a user can act on, and it floods sweep logs.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    try:
        trainer.fit(module, datamodule=_make_datamodule(data, config, stage),
                    ckpt_path=str(resume) if resume else None)
    except SystemExit:
        # Lightning turns Ctrl+C into sys.exit(1) after saving nothing; report it as an interrupt
        # (the CLI tells the user to run the command again to resume).
        if trainer.state.status == TrainerStatus.INTERRUPTED:
            if hasattr(signal, "SIGINT"):
                try:
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                except ValueError:  # not the main thread
                    pass
            raise KeyboardInterrupt from None
        raise
    if not (ckpt_dir / "best.ckpt").is_file():
        raise CheckpointError(f"stage {stage} finished without writing {ckpt_dir / 'best.ckpt'}")


@torch.no_grad()
def evaluate(module, data: _RunData, split: str, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Features (N, F), logits (N, K), labels (N,) of ``split`` under ``module`` in eval mode."""
    module.eval()
    device = next(module.parameters()).device
    loader = data.loader(split, batch_size, train=False, seed=0)
    features, logits, labels = [], [], []
    from asymcl.training.data_module import to_float_images

    for images, targets in loader:
        images = to_float_images(images.to(device))
        feats = module.encoder(images)
        features.append(feats.float().cpu())
        logits.append(module.classifier(feats).float().cpu())
        labels.append(torch.as_tensor(targets).cpu())
    return {"features": torch.cat(features).numpy(), "logits": torch.cat(logits).numpy(),
            "labels": torch.cat(labels).numpy()}


def split_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    from asymcl.training.modules import metric_collection, metrics_to_python

    # Local only: under DDP this runs on rank 0 alone, and a syncing metric would wait for the others.
    metrics = metric_collection(num_classes, sync_on_compute=False)
    metrics.update(torch.as_tensor(logits), torch.as_tensor(labels))
    return metrics_to_python(metrics.compute())


def _final_outputs(config: dict, data: _RunData, run_dir: Path) -> dict[str, Any]:
    """Evaluate the best final model on val and the test splits; write predictions and embeddings."""
    final_stage = stages_for(config)[-1]
    module = _build_module(final_stage, config, data, load_pretrained=False)
    load_module_weights(module, run_dir / "checkpoints" / final_stage / "best.ckpt")
    final, rows, arrays = {}, [], {"classes": np.asarray(data.classes)}
    for split in [s for s in ("val", "test", "test_imbalanced") if s in data.splits.splits]:
        out = evaluate(module, data, split)
        final[split] = split_metrics(out["logits"], out["labels"], data.num_classes)
        if split == "val":
            continue
        probs = torch.softmax(torch.as_tensor(out["logits"]), dim=1).numpy()
        preds = probs.argmax(axis=1)
        for index, (label, pred, p) in enumerate(zip(out["labels"], preds, probs)):
            rows.append([split, index, int(label), int(pred), *(f"{x:.6g}" for x in p)])
        arrays[f"{split}_features"] = out["features"].astype(np.float32)
        arrays[f"{split}_labels"] = out["labels"].astype(np.int64)
        arrays[f"{split}_preds"] = preds.astype(np.int64)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["split", "index", "label", "pred", *(f"prob_{c}" for c in data.classes)])
    writer.writerows(rows)
    atomic_write_bytes(run_dir / "predictions.csv", text.getvalue().encode())
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(run_dir / "embeddings.npz", buffer.getvalue())
    return final


# One writer per run directory (training/runlock.py): a second process gets RunLockedError at once.
@locked_run(when=_is_main_process)
def run(config: dict | None, out_dir: str | Path, *, callbacks: Sequence = (),
        verbose: bool | None = None) -> dict[str, Any]:
    """Train and evaluate one run into ``out_dir``; returns the metrics dict of metrics.json.

    ``config``: a (partial) config; it is resolved and validated first. ``callbacks``: extra
    Lightning callbacks for every stage. ``verbose``: stage messages on stderr (default: when
    progress bars are on).
    """
    config = resolve_config(config or {})
    run_dir = Path(out_dir)
    finished = _check_run_dir(config, run_dir)
    if finished is not None:
        return finished
    trainer_cfg = config["trainer"]
    verbose = trainer_cfg["progress_bar"] if verbose is None else verbose
    _quiet_lightning(not verbose)
    if trainer_cfg["num_threads"]:
        torch.set_num_threads(trainer_cfg["num_threads"])

    # Everything that can fail on the user's input (data files, classes, device options, backbone,
    # pretrained weights) fails here, before the run directory is written: a failed first attempt
    # must not leave a directory that then refuses the corrected config.
    data = _RunData(config)
    if not (run_dir / "config.yaml").is_file():
        _check_trainer_options(config)
        _build_module(stages_for(config)[0], config, data)
        _init_run_dir(config, run_dir)
    metrics = read_metrics(run_dir) or _empty_metrics(config)
    metrics["classes"] = data.classes
    metrics["counts"] = data.splits.counts()
    metrics["input"] = {"channels": data.channels, "height": data.image_hw[0], "width": data.image_hw[1]}

    def save_metrics() -> None:
        if _is_main_process():
            atomic_write_json(run_dir / "metrics.json", metrics)

    def on_record(stage: str, entries: list, best: dict) -> None:
        metrics["history"][stage] = entries
        metrics["best"][stage] = best
        save_metrics()

    save_metrics()
    for stage in stages_for(config):
        if stage in metrics["stages_complete"]:
            continue
        _train_stage(stage, config, data, run_dir, on_record, callbacks, verbose)
        metrics["stages_complete"].append(stage)
        save_metrics()
    if _is_main_process():
        metrics["final"] = _final_outputs(config, data, run_dir)
        metrics["status"] = "complete"
        save_metrics()
    return metrics
