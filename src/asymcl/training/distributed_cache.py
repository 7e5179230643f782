"""``asymcl cache build``: a run config's feature caches, extracted by one process or by N.

The N processes come from a launcher:

* ``torchrun`` (or ``srun`` and any launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT``): the process group is initialised here from those variables, ``gloo`` on CPU,
  ``nccl`` when extraction runs on GPUs (one per process, ``LOCAL_RANK``);
* Lightning's launcher, when ``trainer.devices`` asks for more than one device and no launcher
  started the processes: Lightning Fabric's ``ddp`` re-runs this command once per extra device,
  as ``asymcl train`` does with the same setting.

Each rank then extracts its part of the missing images (:mod:`asymcl.data.cache_dist`). With one
process this is what a run does before it trains (:func:`asymcl.training.pipeline.prepare_feature_caches`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from asymcl.errors import ConfigError


def _wants_launcher(config) -> bool:
    devices = config.trainer.devices
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    try:
        return int(devices) > 1
    except (TypeError, ValueError):  # "auto", -1: as many as there are
        return str(devices) in ("-1", "auto") and torch.cuda.device_count() > 1


def _start_process_group(config) -> bool:
    """Initialise torch.distributed when a launcher made N > 1 processes, or start them with
    Lightning's launcher; True if this did it."""
    import torch.distributed as dist

    from asymcl.training.encoder import join_launched_group

    if join_launched_group(config):
        return True
    if _wants_launcher(config) and not dist.is_initialized():
        from lightning.fabric import Fabric

        trainer = config.trainer
        accelerator = "cpu" if trainer.accelerator == "cpu" else "auto"
        Fabric(accelerator=accelerator, devices=trainer.devices, strategy="ddp").launch()
        return True
    return False


def build_caches(config) -> Path | None:
    """Extract (or check) the feature caches of ``config``: the cache folder on the first process,
    None on the others."""
    from asymcl.training.encoder import uses_feature_cache
    from asymcl.training.pipeline import RunData, attach_feature_caches

    if not uses_feature_cache(config):
        raise ConfigError(
            "cache build: this config trains without cached features; set model.finetune "
            "frozen or last:K (with data.cache auto) for a cache to build"
        )
    started = _start_process_group(config)
    try:
        import torch.distributed as dist

        first = not dist.is_initialized() or dist.get_rank() == 0
        data = RunData(config)
        attach_feature_caches(config, data, verbose=False)
        caches = data.feature_caches
        assert caches is not None  # uses_feature_cache: attach_feature_caches has set them
        return caches["train"].path.parent if first else None
    finally:
        if started:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
