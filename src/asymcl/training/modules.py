"""Lightning modules: stage 1 (contrastive), stage 2 (linear classifier on a frozen encoder) and
the end-to-end cross-entropy baseline.

All three share the validation metrics (torchmetrics, on the validation split every epoch):
``val/wa`` (accuracy over samples), ``val/ua`` (mean per-class recall, the balanced accuracy, by
which the best checkpoint is chosen), ``val/macro_f1``, plus per-class recall and the confusion
matrix kept in ``last_val_metrics`` for the run's history.

Stage 1 has no classifier; its validation UA is that of a nearest-class-mean classifier on the
L2-normalised encoder features (class means from the un-augmented training split), a cheap
parameter-free probe of how separable the classes are, so the best stage-1 encoder is chosen by
the same criterion as everything else.

Cached features (``data.cache=auto`` with a frozen encoder part, :mod:`asymcl.training.encoder`):
after :meth:`BaseModule.use_feature_caches` the batches hold image indices instead of images; stage 1
trains the encoder's trainable rest on two cached views per image (a function of (seed, epoch)),
stage 2 and evaluation read the clean features, an end-to-end method one cached view per image.

Randomness: at the first batch of every training epoch torch's global generator is re-seeded from
(seed, stage, epoch). Augmentation draws from it, so an epoch that is re-run after a resume draws
exactly the same augmentations as in an uninterrupted run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
)

from asymcl.data.augment import build_augmentation
from asymcl.data.spec import DATASETS
from asymcl.losses import raise_pending_input_errors
from asymcl.models import LinearClassifier, ProjectionHead
from asymcl.training.data_module import to_float_images
from asymcl.training.encoder import Encoder, build_encoder
from asymcl.training.methods import STAGE_OFFSETS

if TYPE_CHECKING:
    from asymcl.training.config import RunConfig
    from asymcl.training.config_sections import OptimisationConfig


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    return (seed * 1_000_003 + STAGE_OFFSETS[stage] * 10_007 + epoch) % (2**63 - 1)


def augmentation_preset(config: RunConfig, dataset_name: str, channels: int) -> str:
    preset = config.data.augment
    if preset != "auto":
        return preset
    info = DATASETS.get(dataset_name)
    if info is not None and info.augmentation is not None:  # the dataset entry says which
        return info.augmentation
    return "dermoscopy" if channels == 3 else "grey28"


class ClassificationLoss(nn.Module):
    """Cross-entropy, softmax focal loss, or logit-adjusted cross-entropy (training only).

    * ``ce``: -log p_y.
    * ``focal``: -(1 - p_y)^gamma log p_y (Lin et al. 2017, softmax form).
    * ``logit_adjusted``: cross-entropy on logits + tau * log(prior) (Menon et al. 2021), with
      the prior = training class frequencies; predictions use the plain logits.
    """

    log_prior_shift: Tensor  # a buffer (register_buffer), which nn.Module types as Tensor | Module

    def __init__(self, name: str, class_counts: Tensor, focal_gamma: float = 2.0, tau: float = 1.0):
        super().__init__()
        self.name = name
        self.focal_gamma = focal_gamma
        prior = class_counts.double().clamp_min(1) / class_counts.double().clamp_min(1).sum()
        self.register_buffer("log_prior_shift", (tau * prior.log()).float(), persistent=False)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = logits.float()
        if self.name == "logit_adjusted":
            return F.cross_entropy(logits + self.log_prior_shift, labels)
        if self.name == "focal":
            log_p = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
            return (-(1 - log_p.exp()).pow(self.focal_gamma) * log_p).mean()
        return F.cross_entropy(logits, labels)


def metric_collection(num_classes: int, sync_on_compute: bool = True) -> MetricCollection:
    """``sync_on_compute=False`` for metrics computed on one process only (the final evaluation)."""
    sync = sync_on_compute
    return MetricCollection(
        {
            "wa": MulticlassAccuracy(num_classes, average="micro", sync_on_compute=sync),
            "ua": MulticlassRecall(num_classes, average="macro", sync_on_compute=sync),
            "macro_f1": MulticlassF1Score(num_classes, average="macro", sync_on_compute=sync),
            "per_class_recall": MulticlassRecall(num_classes, average=None, sync_on_compute=sync),
            "confusion_matrix": MulticlassConfusionMatrix(num_classes, sync_on_compute=sync),
        }
    )


def metrics_to_python(values: dict[str, Tensor]) -> dict[str, Any]:
    """torchmetrics results -> JSON-ready floats and lists."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        value = value.detach().cpu()
        out[key] = value.item() if value.ndim == 0 else value.tolist()
    return out


class BaseModule(pl.LightningModule):
    stage = "base"
    encoder: Encoder  # every stage module builds one (build_encoder) in its __init__

    def __init__(
        self, config: RunConfig, num_classes: int, in_channels: int, image_hw: tuple[int, int], augment_preset: str
    ):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.seed = int(config.seed)
        self.augment = build_augmentation(augment_preset, image_hw, in_channels)
        self.val_metrics = metric_collection(num_classes)
        self.last_val_metrics: dict[str, Any] = {}
        self._loss_sum = 0.0
        self._loss_count = 0
        self.last_train_loss: float | None = None
        self.feature_caches: dict | None = None  # plain attribute: not weights, not in checkpoints

    # -- slim checkpoints (training/checkpoints.py) ------------------------------------------------
    def checkpoint_references(self) -> list[tuple[str, dict, dict]]:
        """``(prefix, source, {key: tensor})`` of the state entries a checkpoint keeps by reference:
        the frozen backbone parameters, when bundled or file weights rebuild them."""
        found = self.encoder.frozen_reference()
        return [] if found is None else [("encoder.backbone.", found[0], found[1])]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from asymcl.training.checkpoints import slim_checkpoint

        slim_checkpoint(checkpoint, self.checkpoint_references())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Resuming: this module was built with the referenced weights (checked against the digest).
        from asymcl.training.checkpoints import restore_references

        path = getattr(self, "resume_path", None) or "being resumed"
        restore_references(checkpoint, path, own_state=self.state_dict())

    # -- cached features --------------------------------------------------------------------------
    def use_feature_caches(self, caches: dict | None) -> None:
        """``{split: FeatureCache}``: batches then carry image indices into these caches."""
        self.feature_caches = caches

    def _view_seed(self) -> int:
        return epoch_seed(self.seed, self.stage, 0)

    def _cached(self, split: str, indices: Tensor, view: str = "clean") -> Tensor:
        """Cached frozen-part outputs (B, *S) of ``split`` at ``indices``: the clean image, or
        ``view="one"`` (one augmented view) / ``"two"`` (two views, (2B, *S)) of this epoch."""
        assert self.feature_caches is not None  # called for runs from cached features only
        cache = self.feature_caches[split]
        indices = indices.cpu()
        if view == "clean":
            out = cache.clean_features(indices)
        else:
            first, second = cache.two_views(indices, self.current_epoch, self._view_seed())
            out = first if view == "one" else torch.cat([first, second])
        if out.dim() == 4 and self.config.trainer.channels_last:  # last:K maps, for a channels-last model
            out = out.contiguous(memory_format=torch.channels_last)
        return out.to(self.device, non_blocking=True)

    def encode(self, inputs: Tensor, split: str = "val") -> Tensor:
        """Features (B, D) of a batch: images, or image indices into ``split``'s cache."""
        if self.feature_caches is None:
            return self.encoder(inputs)
        return self.encoder.from_frozen(self._cached(split, inputs))

    # -- randomness and the epoch's mean loss ---------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = 0.0, 0

    def on_train_epoch_end(self) -> None:
        # On CUDA the contrastive loss checks its input for NaN/inf without a host sync and raises
        # later (losses/_deferred.py): surface any pending error at a known point, the epoch's end,
        # not at some later call. On CPU every check has already raised, so this is a no-op.
        raise_pending_input_errors()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Re-seed at the first batch, after Lightning has made the epoch's data iterator: where
        # that happens relative to on_train_epoch_start differs between a fresh and a resumed fit.
        if batch_idx == 0:
            torch.manual_seed(epoch_seed(self.seed, self.stage, self.current_epoch))

    def _record_loss(self, loss: Tensor, batch_size: int) -> None:
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self._loss_sum += float(loss.detach()) * batch_size
        self._loss_count += batch_size
        self.last_train_loss = self._loss_sum / self._loss_count

    # -- validation -----------------------------------------------------------------------------
    def predict_logits(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def validation_step(self, batch, batch_idx: int) -> None:
        inputs, labels = batch
        self.val_metrics.update(self.predict_logits(inputs), labels)

    def on_validation_epoch_end(self) -> None:
        values = metrics_to_python(self.val_metrics.compute())
        self.val_metrics.reset()
        for key in ("wa", "ua", "macro_f1"):
            self.log(f"val/{key}", values[key], prog_bar=key == "ua", sync_dist=False)
        self.last_val_metrics = values

    # -- optimisation ---------------------------------------------------------------------------
    def _param_groups(self, params, lr: float) -> list[dict[str, Any]]:
        """The trainable ``params`` as optimizer groups: one at ``lr``; with ``model.finetune_lr_scale``
        s != 1, the backbone's trained blocks in a second group at ``s * lr`` (discriminative
        fine-tuning: pretrained blocks move slower than the new adapter and heads).

        One group when s == 1, so an optimizer state written before the key existed still loads."""
        params = [p for p in params if p.requires_grad]  # frozen encoder parts never train
        scale = float(self.config.model.finetune_lr_scale)
        if scale == 1.0:
            return [{"params": params, "lr": lr}]
        backbone = {id(p) for p in self.encoder.backbone.parameters()}
        blocks = [p for p in params if id(p) in backbone]
        rest = [p for p in params if id(p) not in backbone]
        groups = [{"params": rest, "lr": lr}, {"params": blocks, "lr": lr * scale}]
        return [group for group in groups if group["params"]]

    def _optimizer(self, params, section: OptimisationConfig):
        groups = self._param_groups(params, section.lr)
        optimizer: torch.optim.Optimizer
        if section.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=section.lr, momentum=0.9, weight_decay=section.weight_decay)
        else:
            optimizer = torch.optim.AdamW(groups, lr=section.lr, weight_decay=section.weight_decay)
        if section.scheduler == "none":
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=section.epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class ContrastiveModule(BaseModule):
    """Stage 1: encoder -> projection head -> contrastive loss on two augmented views.

    Batch (B images) -> views (2B, C, H, W) -> z (B, 2, proj_dim), L2-normalised -> loss.
    With ``loss.memory_size`` = K > 0 the criterion is a :class:`asymcl.losses.ContrastiveMemory`:
    its queue (K rows, labels, fill count, position) is in this module's state dict as
    ``criterion.queue_*``, so stage-1 checkpoints hold it and a resumed stage 1 continues with it;
    stage 2 takes only ``encoder.*`` from stage 1.
    """

    stage = "stage1"

    def __init__(
        self,
        config: RunConfig,
        num_classes: int,
        in_channels: int,
        image_hw: tuple[int, int],
        augment_preset: str,
        gather_distributed: bool = False,
        load_pretrained: bool = True,
    ):
        super().__init__(config, num_classes, in_channels, image_hw, augment_preset)
        self.encoder = build_encoder(config, in_channels, image_hw, load_pretrained)
        self.head = ProjectionHead(self.encoder.feature_dim, config.model.proj_hidden_dim, config.model.proj_dim)
        self.criterion = config.method_spec.build_loss(config.loss, gather_distributed)
        self.class_means: Tensor | None = None

    def training_step(self, batch, batch_idx: int) -> Tensor:
        inputs, labels = batch
        if self.feature_caches is not None:
            features = self.encoder.from_frozen(self._cached("train", inputs, view="two"))
        else:
            with torch.no_grad():
                views = torch.cat([self.augment(inputs), self.augment(inputs)])
            features = self.encoder(views)
        z = self.head(features)
        z = torch.stack(z.split(len(inputs)), dim=1)  # (B, 2, D): the two views of image b
        loss = self.criterion(z, labels)
        self._record_loss(loss, len(inputs))
        return loss

    # Nearest-class-mean probe for validation.
    def on_validation_epoch_start(self) -> None:
        # Lightning sets trainer.datamodule when fit() attaches one (its data connector), and the
        # Trainer class does not declare the attribute.
        loader = self.trainer.datamodule.probe_dataloader()  # type: ignore[attr-defined]
        sums = torch.zeros(self.num_classes, self.encoder.feature_dim, device=self.device)
        counts = torch.zeros(self.num_classes, device=self.device)
        with torch.no_grad():
            for inputs, labels in loader:
                inputs = inputs.to(self.device)
                if self.feature_caches is None:
                    inputs = to_float_images(inputs)
                labels = labels.to(self.device)
                features = F.normalize(self.encode(inputs, "train").float(), dim=1)
                sums.index_add_(0, labels, features)
                counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        self.class_means = F.normalize(sums / counts.clamp_min(1)[:, None], dim=1)

    def predict_logits(self, inputs: Tensor) -> Tensor:
        assert self.class_means is not None  # set by on_validation_epoch_start
        features = F.normalize(self.encode(inputs).float(), dim=1)
        return features @ self.class_means.T

    def configure_optimizers(self):
        return self._optimizer(self.parameters(), self.config.stage1)


class LinearProbeModule(BaseModule):
    """Stage 2: frozen encoder (eval mode, batch norm included) -> linear classifier."""

    stage = "stage2"

    def __init__(
        self,
        config: RunConfig,
        num_classes: int,
        in_channels: int,
        image_hw: tuple[int, int],
        augment_preset: str,
        class_counts: Tensor,
    ):
        super().__init__(
            config, num_classes, in_channels, image_hw, augment_preset if config.stage2.augment else "none"
        )
        self.encoder = build_encoder(config, in_channels, image_hw, load_pretrained=False)
        self.encoder.requires_grad_(False)
        self.classifier = LinearClassifier(self.encoder.feature_dim, num_classes)
        s2 = config.stage2
        self.criterion = ClassificationLoss(s2.loss, class_counts, s2.focal_gamma, s2.logit_tau)
        self._feature_tables: dict[str, tuple] = {}  # split -> (stamp, (N, D) encoder outputs)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: batch-norm statistics must not move
        return self

    def checkpoint_references(self) -> list[tuple[str, dict, dict]]:
        # The whole encoder is stage 1's best one (the pipeline loads it before training): only the
        # classifier trains here.
        source = {"kind": "checkpoint", "path": "../stage1/best.ckpt", "prefix": "encoder."}
        return [("encoder.", source, self.encoder.state_dict())]

    def features(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.encoder(images)

    # Stage 2 never changes the encoder, so from cached clean features its outputs are the same every
    # epoch: they are computed once per split and indexed. Running the adapter over every image
    # each epoch was about a tenth of a pretrained ISIC run. The table is rebuilt whenever a weight
    # of the encoder is written (a checkpoint loaded into it bumps the tensors' versions), and left
    # out for splits too large to hold twice.
    _TABLE_MAX_BYTES = 1 << 29

    def _encoder_version(self) -> tuple[int, ...]:
        return tuple(t._version for t in (*self.encoder.parameters(), *self.encoder.buffers()))

    def encode(self, inputs: Tensor, split: str = "val") -> Tensor:
        if self.feature_caches is None:
            return super().encode(inputs, split)
        cache = self.feature_caches[split]
        if len(cache) * self.encoder.feature_dim * 4 > self._TABLE_MAX_BYTES:
            return super().encode(inputs, split)
        stamp = (id(cache), self._encoder_version())
        table = self._feature_tables.get(split)
        if table is None or table[0] != stamp:
            with torch.no_grad():
                rows = [
                    self.encoder.from_frozen(cache.clean_features(chunk).to(self.device))
                    for chunk in torch.arange(len(cache)).split(1024)
                ]
            table = self._feature_tables[split] = (stamp, torch.cat(rows))
        return table[1][inputs.to(table[1].device)]

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.features(images))

    def training_step(self, batch, batch_idx: int) -> Tensor:
        inputs, labels = batch
        # Again here: Lightning restores sub-module modes itself around validation, bypassing train().
        self.encoder.eval()
        with torch.no_grad():
            if self.feature_caches is not None and not self.config.stage2.augment:
                features = self.encode(inputs, "train")
            elif self.feature_caches is not None:
                features = self.encoder.from_frozen(self._cached("train", inputs, view="one"))
            else:
                features = self.encoder(self.augment(inputs))
        loss = self.criterion(self.classifier(features.float()), labels)
        self._record_loss(loss, len(inputs))
        return loss

    def predict_logits(self, inputs: Tensor) -> Tensor:
        with torch.no_grad():
            return self.classifier(self.encode(inputs))

    def configure_optimizers(self):
        return self._optimizer(self.classifier.parameters(), self.config.stage2)


class EndToEndModule(BaseModule):
    """The baselines: encoder + linear classifier trained together with ``stage2.loss`` on one
    augmented view per image, with the optimisation settings of ``stage1`` (``ce``; ``la`` is the
    same with ``stage2.loss`` fixed at ``logit_adjusted``)."""

    stage = "baseline"

    def __init__(
        self,
        config: RunConfig,
        num_classes: int,
        in_channels: int,
        image_hw: tuple[int, int],
        augment_preset: str,
        class_counts: Tensor,
        load_pretrained: bool = True,
    ):
        super().__init__(config, num_classes, in_channels, image_hw, augment_preset)
        self.encoder = build_encoder(config, in_channels, image_hw, load_pretrained)
        self.classifier = LinearClassifier(self.encoder.feature_dim, num_classes)
        s2 = config.stage2
        self.criterion = ClassificationLoss(s2.loss, class_counts, s2.focal_gamma, s2.logit_tau)

    def features(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.encoder(images))

    def training_step(self, batch, batch_idx: int) -> Tensor:
        inputs, labels = batch
        if self.feature_caches is not None:
            # The same adapter as the two-stage methods train, on what their classifier reads
            # (stage2.augment): the clean image's features or one cached view per image. Views for
            # the baselines and clean features for the rest made the baselines' classifiers read a
            # harder input than everyone else's (2-4 UA points on ISIC).
            view = "one" if self.config.stage2.augment else "clean"
            features = self.encoder.from_frozen(self._cached("train", inputs, view=view))
        else:
            with torch.no_grad():
                inputs = self.augment(inputs)
            features = self.encoder(inputs)
        loss = self.criterion(self.classifier(features), labels)
        self._record_loss(loss, len(labels))
        return loss

    def predict_logits(self, inputs: Tensor) -> Tensor:
        return self.classifier(self.encode(inputs))

    def configure_optimizers(self):
        return self._optimizer(self.parameters(), self.config.stage1)
