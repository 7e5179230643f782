"""A whole run: data -> stage 1 -> stage 2 (or the ce baseline) -> test metrics and predictions.

``run(config, out_dir)`` is restartable. The run directory (docs/architecture.md, layer 3)::

    config.yaml        the resolved config
    versions.json      python, torch, lightning, asymcl, platform, git commit
    metrics.json       status, final metrics per split, per-epoch history and best epoch per stage
                       (with eval.tta_views: final = test-time-augmented, final_single_view = clean only)
    checkpoints/{stage}/last.ckpt, best.ckpt     stage in stage1, stage2 (two-stage), baseline (ce, la)
                                                 or joint (schedule=joint)
    predictions.csv    split,index,label,pred,prob_<class>...,image for the test splits
    embeddings.npz     encoder features of the test splits (``{split}_features``, ``_labels``, ``_preds``,
                       ``_ids``); all rows, or a seeded sample of ``eval.embeddings`` rows, or none (0)
    submission_isic2018_test.csv   isic2018 runs on all classes with the official test set: the
                       challenge's submission format (image,MEL,NV,BCC,AKIEC,BKL,DF,VASC)
    logs/csv/{stage}/metrics.csv   Lightning's CSV logger (curves; metrics.json stays the contract)
    logs/tensorboard/{stage}/      TensorBoard events, when tensorboard is installed

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
import logging
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asymcl.atomic import atomic_write_bytes
from asymcl.data.isic import SUBMISSION_FILE as ISIC_SUBMISSION  # noqa: F401  (public here too)
from asymcl.data.spec import DATASETS
from asymcl.errors import CheckpointError, ConfigError
from asymcl.training.callbacks import EpochLines, HistoryCallback
from asymcl.training.checkpoints import SafeCheckpointIO, load_module_weights
from asymcl.training.config import RunConfig, resolve_config
from asymcl.training.evaluation import evaluate, split_metrics  # noqa: F401  (public here too)
from asymcl.training.methods import PROBE, stage_seed
from asymcl.training.run_data import RunData, SplitsDataModule, data_spec  # noqa: F401  (data_spec: public here too)
from asymcl.training.run_dir import (
    MetricsRecorder,
    check_run_dir,
    empty_metrics,
    init_run_dir,
    is_main_process,
    read_metrics,
)
from asymcl.training.runlock import locked_run


def stages_for(config: RunConfig) -> tuple[str, ...]:
    """The stages this run trains, in order (the method registry's, or ``joint``)."""
    return config.stages


def _trainer_kwargs(config: RunConfig) -> dict[str, Any]:
    trainer_cfg = config.trainer
    deterministic: bool | str = trainer_cfg.deterministic
    if deterministic and trainer_cfg.accelerator != "cpu":
        deterministic = "warn"  # some CUDA kernels (e.g. in augmentation) have no deterministic form
    return {
        "accelerator": trainer_cfg.accelerator,
        "devices": trainer_cfg.devices,
        "strategy": trainer_cfg.strategy,
        "precision": trainer_cfg.precision,
        "deterministic": deterministic,
    }


def _check_trainer_options(config: RunConfig) -> None:
    """Let Lightning judge the device options now (e.g. accelerator gpu on a machine without one),
    so that they fail as a config error before anything is written or trained."""
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        pl.Trainer(
            **_trainer_kwargs(config),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        trainer_cfg = config.trainer
        raise ConfigError(
            f"trainer options accelerator={trainer_cfg['accelerator']!r}, devices={trainer_cfg['devices']!r}, "
            f"strategy={trainer_cfg['strategy']!r}, precision={trainer_cfg['precision']!r} cannot be "
            f"used here: {str(exc).splitlines()[0]} (trainer.accelerator cpu works everywhere)"
        ) from None


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (where progress bars belong)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def stage_loggers(run_dir: Path, stage: str) -> list:
    """Lightning's CSV logger, and TensorBoard's when it is installed (not a dependency), under
    ``RUN_DIR/logs/{csv,tensorboard}/<stage>/version_N``: the curves in the ecosystem's formats,
    beside metrics.json (the contract). One version per attempt: Lightning's CSV logger empties a
    folder it reuses, so a resumed stage gets the next version and the earlier curves stay."""
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

    logs = Path(run_dir) / "logs"
    loggers: list[Logger] = [CSVLogger(logs / "csv", name=stage)]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(logs / "tensorboard", name=stage, default_hp_metric=False))
    return loggers


def _drop_advertising(record: logging.LogRecord) -> bool:
    """Lightning 2.6 logs a "Tip" to install its cloud products on every Trainer: noise in our output."""
    return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip")


def _quiet_lightning(quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    for name in (
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
    ):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if _drop_advertising not in logger.filters:
            logger.addFilter(_drop_advertising)


def build_module(stage: str, config: RunConfig, data: RunData, *, gather: bool = False, load_pretrained: bool = True):
    """The Lightning module that trains ``stage`` (public: predict builds the final stage's layout
    from :meth:`RunData.shape_only` and loads the weights into it)."""
    from asymcl.training.modules import (
        BaseModule,
        ContrastiveModule,
        EndToEndModule,
        LinearProbeModule,
        augmentation_preset,
    )

    preset = augmentation_preset(config, data.dataset_name, data.channels)
    common = (config, data.num_classes, data.channels, data.image_hw, preset)
    module: BaseModule
    if stage == "stage1":
        module = ContrastiveModule(*common, gather_distributed=gather, load_pretrained=load_pretrained)
    elif stage == "stage2":
        module = LinearProbeModule(*common, class_counts=data.class_counts)
    elif stage == PROBE[0]:
        from asymcl.training.probe import ProbeModule

        module = ProbeModule(*common, class_counts=data.class_counts, load_pretrained=load_pretrained)
    elif stage == "joint":
        from asymcl.training.joint import JointModule

        # Logit adjustment corrects for the class prior of the batches the loss sees: under a
        # class-balanced or m-per-class stage-1 sampler that prior is uniform (the shift is then a
        # constant and LA-CE is plain CE); adjusting by the pool's counts would correct twice.
        counts = data.class_counts if config.stage1.sampler == "random" else torch.ones_like(data.class_counts)
        module = JointModule(*common, class_counts=counts, gather_distributed=gather, load_pretrained=load_pretrained)
    else:
        module = EndToEndModule(*common, class_counts=data.class_counts, load_pretrained=load_pretrained)
    module.use_feature_caches(data.feature_caches)
    return module


def attach_feature_caches(config: RunConfig, data: RunData, verbose: bool, report_reuse: bool = True) -> None:
    """Build (or reuse) the run's feature caches when it trains from cached features."""
    from asymcl.training.encoder import build_feature_caches, cache_device, uses_feature_cache
    from asymcl.training.modules import augmentation_preset

    if not uses_feature_cache(config):
        return
    import lightning.pytorch as pl

    from asymcl.training.encoder import join_launched_group

    join_launched_group(config)  # under torchrun the ranks extract their parts (data/cache_dist.py)

    preset = augmentation_preset(config, data.dataset_name, data.channels)
    # Seeded as the first stage seeds its module, so that a frozen part without pretrained weights
    # (random initialisation) is the one that module holds (_train_stage checks the digest).
    pl.seed_everything(stage_seed(config.seed, stages_for(config)[0]), workers=True, verbose=False)
    caches = build_feature_caches(config, data, preset, cache_device(config), report_reuse=report_reuse)
    if verbose:
        print(f"[asymcl] training from cached features in {caches['train'].path.parent}", file=sys.stderr)
    data.attach_feature_caches(caches)


def prepare_feature_caches(config: RunConfig | dict) -> bool:
    """Build (or check) the feature caches a run of ``config`` would train from, without training.

    For running many runs at once: a sweep builds them first with every core
    (:mod:`asymcl.experiments.parallel`), so that its workers do not wait on the cache lock while
    one of them extracts on its share of the cores. Returns False when ``config`` does not train
    from cached features (nothing to build).
    """
    from asymcl.training.encoder import uses_feature_cache

    config = resolve_config(config)
    if not uses_feature_cache(config):
        return False
    attach_feature_caches(config, RunData(config), verbose=False)
    return True


def _check_cache_matches(module, data: RunData) -> None:
    """The cached features must come from the frozen weights the module holds (a wrong number
    without an error is the worst bug)."""
    from asymcl.data.feature_cache import weights_digest

    caches = data.feature_caches
    assert caches is not None  # called for runs from cached features only
    cached = caches["train"].key["weights_sha256"]
    if weights_digest(module.encoder.frozen_input()) != cached:
        raise CheckpointError(
            f"the feature cache {caches['train'].path} holds features of other frozen weights "
            "than this run's model; rerun with data.cache=off, or report this as a bug"
        )


def _train_stage(
    stage: str, config: RunConfig, data: RunData, run_dir: Path, on_record: Callable, callbacks: Sequence, verbose: bool
) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.trainer.states import TrainerStatus

    trainer_cfg = config.trainer
    epochs = config.stage_section(stage).epochs
    ckpt_dir = run_dir / "checkpoints" / stage
    last = ckpt_dir / "last.ckpt"
    # best.ckpt holds the weights only: it is read for its weights (stage 2, evaluation, predict,
    # export), never resumed from, and the optimizer state was two thirds of it under AdamW.
    best_checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val/ua",
        mode="max",
        save_top_k=1,
        save_last=False,
        enable_version_counter=False,
        auto_insert_metric_name=False,
        save_weights_only=True,
    )
    # Not save_last=True: Lightning 2.6 then writes last.ckpt only in epochs that improve the best,
    # so a resume went back to the best epoch and redid every epoch since. A second, unmonitored
    # callback rewrites last.ckpt after every epoch. It comes after the best one, so the state it
    # saves already holds this epoch's best score. trainer.save_last=false: none (sweeps).
    last_checkpoint = (
        [
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="last",
                monitor=None,
                save_top_k=1,
                every_n_epochs=1,
                enable_version_counter=False,
                auto_insert_metric_name=False,
            )
        ]
        if trainer_cfg.save_last
        else []
    )
    # Bars redraw with carriage returns: right on a terminal, noise in a log file, CI or `| tee`.
    # There the same progress_bar: true gives one line per epoch instead.
    bars = trainer_cfg.progress_bar and is_terminal(sys.stderr)
    lines = [EpochLines(stage)] if trainer_cfg.progress_bar and not bars else []
    trainer = pl.Trainer(
        max_epochs=epochs,
        **_trainer_kwargs(config),
        enable_progress_bar=bars,
        enable_model_summary=False,
        logger=stage_loggers(run_dir, stage),
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=1,
        default_root_dir=str(run_dir),
        plugins=[SafeCheckpointIO()],
        callbacks=[HistoryCallback(stage, on_record), best_checkpoint, *last_checkpoint, *lines, *callbacks],
    )
    # The same initial weights on every attempt of this stage, whatever ran before it.
    pl.seed_everything(stage_seed(config.seed, stage), workers=True, verbose=False)
    module = build_module(stage, config, data, gather=trainer.world_size > 1)
    if config.trainer.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if stage == "stage2":
        load_module_weights(module.encoder, run_dir / "checkpoints" / "stage1" / "best.ckpt", prefix="encoder.")
    if data.feature_caches is not None:
        _check_cache_matches(module, data)
    resume = last if last.is_file() and trainer_cfg.save_last else None
    if resume is not None:
        from asymcl.training.checkpoints import load_checkpoint

        # A corrupt last.ckpt, or frozen weights that differ from its reference: a clear
        # CheckpointError before Lightning starts.
        load_checkpoint(resume)
        module.resume_path = resume
    if verbose:
        what = f"resuming from {resume}" if resume else f"{epochs} epoch(s)"
        print(f"[asymcl] {stage}: {what}", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            # Both are about our own, intended set-up: the checkpoint folder holds the previous
            # attempt's files on a resume; Lightning 2.6 on torch >= 2.10 warns about its own use of
            # a torch API once per dataloader (nothing a user can act on; it floods sweep logs).
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            # A frozen encoder part stays in eval mode on purpose (model.finetune frozen / last:K).
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
            trainer.fit(
                module, datamodule=SplitsDataModule(data, config, stage), ckpt_path=str(resume) if resume else None
            )
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


def _finish_stage_checkpoints(ckpt_dir: Path, save_last: bool) -> None:
    """A finished stage is never resumed: its last.ckpt keeps the final epoch's weights and drops
    the optimizer and callback states (best.ckpt is written weights-only already). Under
    ``trainer.save_last=false`` a last.ckpt is an earlier attempt's, not this stage's last epoch:
    removed."""
    from asymcl.training.checkpoints import keep_weights_only

    last = ckpt_dir / "last.ckpt"
    if last.is_file() and not save_last:
        last.unlink()
    elif last.is_file():
        keep_weights_only(last)


def _embedding_rows(n: int, limit: int | None) -> np.ndarray:
    """Indices (ascending) of the rows of an ``n``-row split that embeddings.npz keeps: all, or a
    sample of ``limit`` seeded by 0, so every run of a sweep keeps the same images (a grid of
    thousands of runs at 1,280 features per test image would otherwise need hundreds of GB)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))


def _final_outputs(config: RunConfig, data: RunData, run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate the best final model on val and the test splits; write predictions and embeddings.
    Returns (final, single-view) metrics per split: with ``eval.tta_views`` the first are the
    test-time-augmented predictions' (also those written), the second the clean images' alone;
    without, the first are the clean images' and the second is empty."""
    final_stage = stages_for(config)[-1]
    module = build_module(final_stage, config, data, load_pretrained=False)
    load_module_weights(module, run_dir / "checkpoints" / final_stage / "best.ckpt")
    final, single, rows, arrays = {}, {}, [], {"classes": np.asarray(data.classes)}
    for split in [s for s in ("val", "test", "test_imbalanced") if s in data.splits.splits]:
        out = evaluate(module, data, split)
        final[split] = split_metrics(out["logits"], out["labels"], data.num_classes)
        probs = torch.softmax(torch.as_tensor(out["logits"]), dim=1).numpy()
        if config.eval.tta_views:
            from asymcl.training.tta import split_tta_probabilities

            single[split] = final[split]
            probs = split_tta_probabilities(module, config, data, split)
            final[split] = split_metrics(probs, out["labels"], data.num_classes)
        if split == "val":
            continue
        preds = probs.argmax(axis=1)
        ids = data.splits[split].ids
        for index, (label, pred, p, image) in enumerate(zip(out["labels"], preds, probs, ids, strict=True)):
            rows.append([split, index, int(label), int(pred), *(f"{x:.6g}" for x in p), image])
        kept = _embedding_rows(len(ids), config.eval.embeddings)
        arrays[f"{split}_features"] = out["features"][kept].astype(np.float32)
        arrays[f"{split}_labels"] = out["labels"][kept].astype(np.int64)
        arrays[f"{split}_preds"] = preds[kept].astype(np.int64)
        arrays[f"{split}_ids"] = np.asarray(ids, dtype=str)[kept]
        # The dataset entry declares its extra files (isic2018: the challenge submission).
        extra = DATASETS[data.dataset_name].extra_outputs(
            split=split, official=split in data.splits.official, ids=ids, probs=probs, classes=list(data.classes)
        )
        for name, content in extra.items():
            atomic_write_bytes(run_dir / name, content)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    # `image` comes last: the columns before it keep the positions older readers expect.
    writer.writerow(["split", "index", "label", "pred", *(f"prob_{c}" for c in data.classes), "image"])
    writer.writerows(rows)
    atomic_write_bytes(run_dir / "predictions.csv", text.getvalue().encode())
    if config.eval.embeddings == 0:
        return final, single
    buffer = io.BytesIO()
    # Not savez_compressed: float32 features hardly compress (a pretrained Fashion-MNIST run's 64 MB
    # became 59 MB) and deflating them took about 1.8 s of every run (benchmarks/claim_run_speed.py).
    # np.load reads either form.
    # numpy's stub lets a **dict's values be allow_pickle (a bool), so a dict of arrays does not fit it
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(run_dir / "embeddings.npz", buffer.getvalue())
    return final, single


# One writer per run directory (training/runlock.py): a second process gets RunLockedError at once.
@locked_run(when=is_main_process)
def run(
    config: RunConfig | dict | None,
    out_dir: str | Path,
    *,
    callbacks: Sequence = (),
    verbose: bool | None = None,
    report_cache: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one run into ``out_dir``; returns the metrics dict of metrics.json.

    ``config``: a (partial) config; it is resolved and validated first. ``callbacks``: extra
    Lightning callbacks for every stage. ``verbose``: stage messages on stderr (default: when
    progress bars are on). ``report_cache=False``: no feature-cache line when the cache was only
    read (a sweep's runs); an extraction is always reported.
    """
    config = resolve_config(config or {})
    run_dir = Path(out_dir)
    finished = check_run_dir(config, run_dir)
    if finished is not None:
        return finished
    trainer_cfg = config.trainer
    verbose = trainer_cfg.progress_bar if verbose is None else verbose
    _quiet_lightning(not verbose)
    if trainer_cfg.num_threads:
        torch.set_num_threads(trainer_cfg.num_threads)

    # Everything that can fail on the user's input (data files, classes, device options, backbone,
    # pretrained weights) fails here, before the run directory is written: a failed first attempt
    # must not leave a directory that then refuses the corrected config.
    data = RunData(config)
    if not (run_dir / "config.yaml").is_file():
        _check_trainer_options(config)
        build_module(stages_for(config)[0], config, data)
    # Before the run directory too: a failed extraction (e.g. a full disk) leaves nothing half-written.
    attach_feature_caches(config, data, verbose, report_reuse=report_cache)
    if not (run_dir / "config.yaml").is_file():
        init_run_dir(config, run_dir)
    metrics = read_metrics(run_dir) or empty_metrics(config)
    metrics["classes"] = data.classes
    metrics["counts"] = data.splits.counts()
    metrics["input"] = {"channels": data.channels, "height": data.image_hw[0], "width": data.image_hw[1]}

    recorder = MetricsRecorder(run_dir, metrics)
    recorder.save()
    for stage in stages_for(config):
        if stage in metrics["stages_complete"]:
            continue
        if stage == PROBE[0]:  # scikit-learn fits it: no Lightning loop, no epochs
            import lightning.pytorch as pl

            from asymcl.training.probe import train_probe

            pl.seed_everything(stage_seed(config.seed, stage), workers=True, verbose=False)
            train_probe(build_module(stage, config, data), config, data, run_dir, recorder)
        else:
            _train_stage(stage, config, data, run_dir, recorder, callbacks, verbose)
        recorder.reload_history()
        metrics["stages_complete"].append(stage)
        recorder.save()
        if is_main_process():  # only now: until the stage is recorded complete, a resume needs it all
            _finish_stage_checkpoints(run_dir / "checkpoints" / stage, config.trainer.save_last)
    if is_main_process():
        metrics["final"], single_view = _final_outputs(config, data, run_dir)
        if single_view:  # eval.tta_views: "final" holds the test-time-augmented metrics
            metrics["final_single_view"] = single_view
        metrics["status"] = "complete"
        recorder.save()
    return metrics
