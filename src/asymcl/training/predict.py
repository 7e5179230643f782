"""Class probabilities for new images from a finished run.

Images are read with Pillow, converted to the run's channels (``L`` or ``RGB``) and resized to its
input size, and passed through the run's best final model (stage 2, or the ce baseline); with
``--tta`` the probabilities are averaged over each image and its seeded views (asymcl.training.tta).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from asymcl.atomic import atomic_write_bytes
from asymcl.data.spec import DATASETS, DEFAULT_PREDICTIONS_FORMAT, IMAGE_SUFFIXES, submission_formats
from asymcl.errors import CheckpointError, DataError
from asymcl.training.checkpoints import load_module_weights
from asymcl.training.config import read_recorded_config


def find_images(path: str | Path) -> list[Path]:
    """One image file, or every image file in a folder and its sub-folders (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"--images {path} is neither an image file nor a folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return files


def load_image(path: Path, channels: int, size_hw: tuple[int, int]) -> np.ndarray:
    """(C, H, W) uint8 array of one image file, decoded exactly as the training data was (the data
    layer's decoder: same JPEG draft scale, same resize), so that predictions match the run's own."""
    from asymcl.data.datasets import decode_image

    return decode_image(str(path), channels, size_hw).transpose(2, 0, 1)


class RunModel:
    """The best final model of a run directory, ready for inference."""

    def __init__(self, run_dir: str | Path):
        from asymcl.training.pipeline import RunData, build_module, stages_for

        self.run_dir = Path(run_dir)
        config_path, metrics_path = self.run_dir / "config.yaml", self.run_dir / "metrics.json"
        if not config_path.is_file() or not metrics_path.is_file():
            raise CheckpointError(f"{self.run_dir} is not a run directory (config.yaml and metrics.json expected)")
        # The checkpoint holds every weight, so neither the training data nor a weights file in
        # model.pretrained has to be here: a run folder copied to a laptop predicts.
        self.config = read_recorded_config(config_path)
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("status") != "complete":
            raise CheckpointError(f"the run in {self.run_dir} has not finished; run `asymcl train` on it again first")
        self.classes = list(metrics["classes"])
        shape = metrics["input"]
        self.channels, self.size_hw = int(shape["channels"]), (int(shape["height"]), int(shape["width"]))

        stage = stages_for(self.config)[-1]
        checkpoint = self.run_dir / "checkpoints" / stage / "best.ckpt"
        if not checkpoint.is_file():
            raise CheckpointError(
                f"the run in {self.run_dir} has no trained {stage} model ({checkpoint} "
                "is missing); run `asymcl train` with the run's config.yaml again to train it"
            )
        shape = RunData.shape_only(
            num_classes=len(self.classes),
            channels=self.channels,
            image_hw=self.size_hw,
            dataset_name=self.config.data.dataset,
        )
        self.module = build_module(stage, self.config, shape, load_pretrained=False)
        load_module_weights(self.module, checkpoint)
        self.module.eval()

    @torch.no_grad()
    def probabilities(
        self, images: np.ndarray, tta_views: int = 0, fingerprints: list[str] | None = None
    ) -> np.ndarray:
        """(N, C, H, W) uint8 -> (N, num_classes) class probabilities; ``tta_views`` > 0: averaged
        over the image and that many of the run's test-time views (``eval.tta_augment``), drawn with
        its views seed (:func:`asymcl.training.tta.tta_seed`) and each image's ``fingerprints``
        (asymcl.training.tta), as the run's own evaluation with ``eval.tta_views``."""
        batch = torch.as_tensor(images).float().div_(255.0)
        if tta_views:
            if fingerprints is None:  # they seed each image's views
                raise ValueError("tta_views needs the images' fingerprints")
            from asymcl.training.tta import image_tta_probabilities, tta_augmentation, tta_seed

            augment = tta_augmentation(self.config, self.config.data.dataset, self.channels, self.size_hw)
            return image_tta_probabilities(self.module, batch, fingerprints, augment, tta_views, tta_seed(self.config))
        logits = self.module.classifier(self.module.encoder(batch))
        return torch.softmax(logits.float(), dim=1).numpy()

    def tta_views(self, tta: int | None) -> int:
        """Views for ``predict --tta``: ``tta`` itself, or (``-1``, the flag alone) the run's ``eval.tta_views``."""
        if tta is None or tta == 0:
            return 0
        if tta > 0:
            return int(tta)
        if not self.config.eval.tta_views:
            raise DataError(
                f"--tta without a number uses the run's eval.tta_views, which is 0 in {self.run_dir}; "
                "give the number of views, e.g. --tta 4"
            )
        return int(self.config.eval.tta_views)


#: The format ``predict`` writes by default; a dataset with a submission format
#: (``DatasetInfo.submission``, e.g. isic2018) is another (:func:`formats`).
DEFAULT_FORMAT = DEFAULT_PREDICTIONS_FORMAT


def formats() -> list[str]:
    """What ``predict`` can write: :data:`DEFAULT_FORMAT`, then the datasets' submission formats."""
    return [DEFAULT_FORMAT, *submission_formats()]


def _image_names(files: list[Path], images: Path) -> list[str]:
    """Each file's path relative to the --images folder ("/"-separated), or its name for a single
    file: for a folder dataset's root this is the ``image`` of the run's predictions.csv."""
    if images.is_file():
        return [files[0].name]
    return [f.relative_to(images).as_posix() for f in files]


def predict(
    run_dir: str | Path,
    images: str | Path,
    out: str | Path | None = None,
    batch_size: int = 256,
    fmt: str = DEFAULT_FORMAT,
    tta: int | None = None,
) -> str:
    """Predict every image; returns the CSV text and writes it atomically to ``out`` when given.

    ``fmt="asymcl"``: ``path,pred,pred_class,prob_<class>...,image`` with ``path`` the file as
    found, ``image`` its path relative to ``images`` (the file name for a single file).
    ``fmt=<dataset>``: that dataset's submission format (``DatasetInfo.submission``; isic2018:
    ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``), the image ids being the file names without their
    suffix (the ISIC image id), for the challenge's scorer. ``tta``: None or 0 off; ``N`` > 0
    averages over each image and N seeded views; -1 takes the run's ``eval.tta_views`` (the same
    views as the run's evaluation, so the same probabilities).
    """
    if fmt not in formats():
        raise DataError(f"unknown predictions format {fmt!r}; choose one of {', '.join(formats())}")
    model = RunModel(run_dir)
    dataset = None if fmt == DEFAULT_FORMAT else DATASETS[fmt]
    if dataset is not None:  # a run the format cannot score fails before any work
        dataset.submission_csv([], np.zeros((0, len(model.classes))), model.classes)
    files = find_images(images)
    names = _image_names(files, Path(images))
    views = model.tta_views(tta)
    fingerprints = None
    if views:  # the views are seeded by each file's bytes, as the feature cache seeds them
        from asymcl.data.datasets import FileImageDataset
        from asymcl.data.feature_cache import image_fingerprints

        fingerprints = image_fingerprints(
            FileImageDataset(files, np.zeros(len(files)), model.classes, model.channels, model.size_hw, cache=False)
        )
    probabilities = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        arrays = np.stack([load_image(p, model.channels, model.size_hw) for p in chunk])
        probabilities.append(
            model.probabilities(
                arrays, views, None if fingerprints is None else fingerprints[start : start + batch_size]
            )
        )
    probs = np.concatenate(probabilities)
    if dataset is not None:
        stems = [f.stem for f in files]
        repeated = sorted(s for s, n in Counter(stems).items() if n > 1)
        if repeated:
            raise DataError(
                f"--images holds several files for image id(s) {', '.join(repeated[:5])}; "
                f"a {fmt} submission has one row per image"
            )
        text = dataset.submission_csv(stems, probs, model.classes)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "pred", "pred_class", *(f"prob_{c}" for c in model.classes), "image"])
        for path, row, name in zip(files, probs, names, strict=True):
            pred = int(row.argmax())
            writer.writerow([str(path), pred, model.classes[pred], *(f"{p:.6g}" for p in row), name])
        text = buffer.getvalue()
    if out is not None:
        atomic_write_bytes(out, text.encode())
    return text
