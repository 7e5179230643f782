"""The joint schedule (``schedule=joint``): one stage in which the encoder, the projection head and a
linear classifier train together.

    L = LA-CE(classifier(f(v)), y) + lambda * L_con(normalize(head(f(v))), y)

over a batch of B images with two augmented views each (v: the 2B views, f: the encoder). The
classifier sees both views' encoder features (2B rows, each with its image's label), the same rows
the contrastive loss sees through the projection head, so both terms are measured on the same
augmented data. LA-CE is logit-adjusted cross-entropy (Menon et al. 2021) with tau =
``stage2.logit_tau`` and the class prior of the training batches (the training split's class
frequencies under ``stage1.sampler=random``, uniform under a balanced sampler); lambda = ``joint.weight``; L_con is the run's
method (supcon, cl, fcl, acl or afcl). This is how the focal contrastive loss was first used
(Core-tuning) and how BCL and PaCo train long-tailed models. Evaluation (and model selection on
validation UA) uses the classifier on the encoder features of un-augmented images, as for the
end-to-end baseline; predictions use the plain logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from asymcl.models import LinearClassifier, ProjectionHead
from asymcl.training.encoder import build_encoder
from asymcl.training.modules import BaseModule, ClassificationLoss


class JointModule(BaseModule):
    """Encoder + projection head + linear classifier, trained on LA-CE + lambda * contrastive."""

    stage = "joint"

    def __init__(
        self,
        config,
        num_classes: int,
        in_channels: int,
        image_hw: tuple[int, int],
        augment_preset: str,
        class_counts: Tensor,
        gather_distributed: bool = False,
        load_pretrained: bool = True,
    ):
        super().__init__(config, num_classes, in_channels, image_hw, augment_preset)
        self.encoder = build_encoder(config, in_channels, image_hw, load_pretrained)
        self.head = ProjectionHead(self.encoder.feature_dim, config.model.proj_hidden_dim, config.model.proj_dim)
        self.classifier = LinearClassifier(self.encoder.feature_dim, num_classes)
        self.criterion = config.method_spec.build_loss(config.loss, gather_distributed)
        self.classification = ClassificationLoss("logit_adjusted", class_counts, tau=config.stage2.logit_tau)
        self.weight = float(config.joint.weight)

    def loss_parts(self, views: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(total, classification, contrastive) on ``views`` (2B, C, H, W): views[:B] and views[B:]
        are the two views of the B images labelled ``labels`` (B,)."""
        return self._loss_from_features(self.encoder(views), labels)

    def _loss_from_features(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The same from the encoder features (2B, D) of the two views."""
        z = self.head(features)
        z = torch.stack(z.split(len(labels)), dim=1)  # (B, 2, D): the two views of image b
        contrastive = self.criterion(z, labels)
        classification = self.classification(self.classifier(features), torch.cat([labels, labels]))
        return classification + self.weight * contrastive, classification, contrastive

    def training_step(self, batch, batch_idx: int) -> Tensor:
        inputs, labels = batch
        if self.feature_caches is not None:  # two cached views per image, as stage 1 draws them
            features = self.encoder.from_frozen(self._cached("train", inputs, view="two"))
        else:
            with torch.no_grad():
                views = torch.cat([self.augment(inputs), self.augment(inputs)])
            features = self.encoder(views)
        loss, classification, contrastive = self._loss_from_features(features, labels)
        self.log("train/classification_loss", classification.detach(), batch_size=len(labels))
        self.log("train/contrastive_loss", contrastive.detach(), batch_size=len(labels))
        self._record_loss(loss, len(labels))
        return loss

    def features(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.encoder(images))

    def predict_logits(self, inputs: Tensor) -> Tensor:
        return self.classifier(self.encode(inputs))

    def configure_optimizers(self):
        return self._optimizer(self.parameters(), self.config.stage1)
