"""A tiny run that trains part of a backbone, and one optimizer step of it on a fixed batch: what
the tests of the trained blocks' options (``model.finetune_lr_scale``, ``model.finetune_bn``) share."""

from __future__ import annotations

import torch
from torch import nn

from asymcl.training.config import resolve_config
from asymcl.training.pipeline import RunData, build_module


def finetune_config(method: str, finetune: str, **model_keys) -> dict:
    """Digits 0-2 on the small CNN, plain SGD at a fixed lr, no cache; ``model_keys`` are set as
    ``model.<key>`` (a value of None leaves the key at its default)."""
    config = {
        "method": method,
        "seed": 0,
        "data.dataset": "digits",
        "data.classes": [0, 1, 2],
        "model.backbone": "small_cnn",
        "model.finetune": finetune,
        "model.proj_hidden_dim": 16,
        "model.proj_dim": 8,
        "data.cache": "off",
        "stage1.optimizer": "sgd",
        "stage1.weight_decay": 0.0,
        "stage1.scheduler": "none",
        "stage1.lr": 0.05,
        "trainer.progress_bar": False,
    }
    config.update({f"model.{key}": value for key, value in model_keys.items() if value is not None})
    return config


def train_mode_module(stage: str, raw: dict, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The stage's training module in train mode, with the same initial weights for every config."""
    config = resolve_config(raw)
    torch.manual_seed(0)
    module = build_module(stage, config, RunData(config))
    module.train()
    return module.to(dtype)


def optimizer_step(module, data_seed: int = 3) -> dict[str, torch.Tensor]:
    """One training step on a fixed batch of 8 images (8 x 8 px); the parameters' deltas."""
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    dtype = next(module.parameters()).dtype
    generator = torch.Generator().manual_seed(data_seed)
    inputs = torch.rand(8, 1, 8, 8, generator=generator, dtype=torch.float64).to(dtype)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    torch.manual_seed(data_seed)  # the augmentation's draws
    module.training_step((inputs, labels), 0).backward()
    optimizer.step()
    return {name: p.detach() - before[name] for name, p in module.named_parameters()}
