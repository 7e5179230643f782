"""Tiny on-disk datasets written by the data tests: IDX files, ISIC layouts, folders, CSVs, npz."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ISIC_CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
    """An unsigned-byte IDX file holding ``array``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(struct.pack(">I", d) for d in array.shape)
    return header + dims + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True, magic: bytes | None = None) -> Path:
    data = idx_bytes(array, magic)
    if gz:
        path = path.with_name(path.name + ".gz") if not path.name.endswith(".gz") else path
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_fashion_mnist(
    root: Path, train_per_class: int = 20, test_per_class: int = 6, gz: bool = True, seed: int = 0
) -> Path:
    """Four IDX files, balanced, each image filled with a value that encodes its label."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = np.repeat(labels[:, None, None] * 20, 28 * 28, axis=1).reshape(-1, 28, 28)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return root


def write_image(path: Path, value: int, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> None:
    """A flat image (PIL size is (width, height)) whose pixels encode ``value``."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, (3 * value) % 256)
    Image.new(mode, size, color).save(path)


def write_ground_truth(
    path: Path,
    rows: Sequence[tuple[str, int]],
    order: Sequence[str] = ISIC_CLASSES,
    floats: bool = True,
) -> None:
    one, zero = ("1.0", "0.0") if floats else ("1", "0")
    lines = ["image," + ",".join(order)]
    for image, label in rows:
        cells = [one if name == ISIC_CLASSES[label] else zero for name in order]
        lines.append(image + "," + ",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def make_isic(
    root: Path,
    train_per_class: Sequence[int] = (6, 10, 5, 4, 6, 4, 4),
    test_per_class: Sequence[int] = (2, 3, 2, 2, 2, 2, 2),
    order: Sequence[str] = ISIC_CLASSES,
    floats: bool = True,
    metadata: bool = True,
    images_per_lesion: int = 2,
    validation: bool = False,
) -> dict:
    """An ISIC 2018 Task 3 layout with tiny JPEGs; returns the image ids and lesion ids written."""
    root.mkdir(parents=True, exist_ok=True)
    counter = 24306
    written = {}
    lesion_of = {}
    parts = [("Training", train_per_class), ("Test", test_per_class)]
    if validation:
        parts.append(("Validation", (1,) * 7))
    for part, per_class in parts:
        rows = []
        for label, n in enumerate(per_class):
            for _ in range(n):
                image = f"ISIC_{counter:07d}"
                counter += 1
                rows.append((image, label))
                write_image(root / f"ISIC2018_Task3_{part}_Input" / f"{image}.jpg", 30 * label + 10)
        write_ground_truth(root / f"ISIC2018_Task3_{part}_GroundTruth.csv", rows, order, floats)
        written[part] = rows
    if metadata:
        lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
        # Consecutive training images of one class share a lesion, as in HAM10000.
        for k, (image, label) in enumerate(written["Training"]):
            lesion = f"HAM_{label}_{k // images_per_lesion:04d}"
            lesion_of[image] = lesion
            lines.append(f"{lesion},{image},{ISIC_CLASSES[label].lower()},histo,50.0,male,back")
        (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    written["lesion_of"] = lesion_of
    return written


def make_class_folder(root: Path, per_class: dict[str, int], mode: str = "RGB", ext: str = ".png") -> Path:
    for k, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(root / name / f"img{i:03d}{ext}", 40 * k + i, mode=mode)
    return root


#: The smallest whole run of the pipeline: digits, one epoch per stage, small heads, one thread.
TINY_RUN = {
    "data.dataset": "digits",
    "data.imbalance": "exp:5",
    "stage1.epochs": 1,
    "stage2.epochs": 1,
    "stage1.batch_size": 128,
    "stage2.batch_size": 128,
    "model.proj_hidden_dim": 32,
    "model.proj_dim": 16,
    "trainer.progress_bar": False,
    "trainer.num_threads": 1,
}


def tiny_config(method: str = "afcl", **overrides: object) -> dict:
    """The pipeline tests' run: three digit classes at exp:4, one epoch per stage in batches of 32,
    small heads; ``overrides`` (dotted keys) replace or add keys."""
    config: dict = {
        "method": method,
        "seed": 0,
        "data.classes": [0, 1, 2],
        "data.imbalance": "exp:4",
        "stage1.epochs": 1,
        "stage1.batch_size": 32,
        "stage2.epochs": 1,
        "stage2.batch_size": 32,
        "model.proj_hidden_dim": 32,
        "model.proj_dim": 16,
        "trainer.progress_bar": False,
    }
    config.update(overrides)
    return config


def write_row_id_npz(path: Path, train_y: np.ndarray, test_y: np.ndarray) -> Path:
    """An ``.npz`` dataset of 4x4 images whose first two pixels hold each image's row id (read back
    with :func:`row_ids`), so a test can tell exactly which images a split kept."""
    y = np.concatenate([train_y, test_y])
    x = np.zeros((y.size, 4, 4), dtype=np.uint8)
    x[:, 0, 0] = np.arange(y.size) % 256
    x[:, 0, 1] = np.arange(y.size) // 256
    split = np.array(["train"] * len(train_y) + ["test"] * len(test_y))
    classes = np.array([f"c{k}" for k in range(int(y.max()) + 1)])
    np.savez(path, x=x, y=y, split=split, classes=classes)
    return path


def row_ids(dataset) -> np.ndarray:
    """The row ids of a dataset built from :func:`write_row_id_npz`, in its order."""
    images, _ = dataset.load_all()
    return (images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).numpy()
