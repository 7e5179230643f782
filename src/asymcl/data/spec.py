"""What to load: the dataset registry, :class:`DataSpec` and the image suffixes, in one place.

This module sits under both :mod:`asymcl.data.sources` (which reads a source) and
:mod:`asymcl.data.splits` (which carves it into splits), so neither imports the other's types, and
the run config (``data.dataset``) and the ``asymcl data`` command build their choices and options
from it: adding a dataset is one :data:`DATASETS` entry, its loader in ``sources.py``, and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import numbers
from typing import TYPE_CHECKING, Any, Sequence

from asymcl.errors import DataError

if TYPE_CHECKING:  # torch stays unimported: `asymcl data --help` builds its options from here
    import numpy as np

    from asymcl.data.datasets import ImageDataset

#: Image files every folder-based reader accepts: folder sources and ``asymcl predict`` alike.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class DatasetInfo:
    """``loader``: the name of its reader in :mod:`asymcl.data.sources` (``fn(spec) -> SourceData``)."""

    name: str
    help: str
    loader: str
    needs_root: bool = True


_DATASETS = (
    DatasetInfo("digits", "scikit-learn's bundled 8x8 digits (offline, no root)", "load_digits", needs_root=False),
    DatasetInfo("fashion-mnist", "Fashion-MNIST, the four official IDX files in a folder", "load_fashion_mnist"),
    DatasetInfo("isic2018", "ISIC 2018 Task 3 (HAM10000) in the official layout", "load_isic2018"),
    DatasetInfo("npz", "an .npz file of images and labels (optionally split)", "load_npz"),
    DatasetInfo("folder", "a folder of class sub-folders (optionally under train/val/test)", "load_folder"),
    DatasetInfo("csv", "a CSV file of image paths and labels", "load_csv"),
)
#: name -> :class:`DatasetInfo`; iterating gives the names.
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _DATASETS}


def _cli(default: Any, help: str, *, metavar: str | None = None, type: Any = None, required: bool = False):
    """A DataSpec field with what ``asymcl data summary`` needs to offer it as ``--<name>``."""
    return field(default=default, metadata={"cli": {"help": help, "metavar": metavar, "type": type,
                                                    "required": required}})


@dataclass
class DataSpec:
    """What to load. Every field has a default; ``DataSpec()`` is the offline digits set.

    dataset: a name in :data:`DATASETS`.
    root: the folder (fashion-mnist, isic2018, folder), the file (npz, csv); unused for digits.
    imbalance: ``None`` or a profile ``exp:RHO``, ``step:RHO``, ``binary:RHO`` (``:NMAX`` optional;
        see :mod:`asymcl.data.imbalance`).
    classes: class ids (ints, or class names) to keep, in the order that defines the profile: the
        first is the majority. ``None`` keeps all in the source's order.
    val_fraction: share of the (imbalanced) training pool carved out for validation when the
        source has no official validation set.
    test_fraction: share of the pool carved out for testing when the source has no test set.
    val_per_class: ``None``, or a balanced validation set of this many images per class, held out
        of the training pool before the imbalance profile is applied (replaces ``val_fraction``).
    seed: fixes every split and subset.
    image_size: ``None`` (native size) or an int / ``(height, width)`` to resize to.
    cache: keep decoded JPEGs under ``~/.cache/asymcl`` (``$ASYMCL_CACHE_DIR``) for ``load_all``.
    csv_path_column, csv_label_column: column names of a CSV source (found by name otherwise).
    """

    dataset: str = _cli("digits", "data source", required=True)
    root: str | Path | None = _cli(None, "folder (fashion-mnist, isic2018, folder) or file (npz, csv); not needed for digits")
    imbalance: str | None = _cli(None, "exp:RHO, step:RHO or binary:RHO, optionally :NMAX (e.g. exp:100, binary:50)",
                                 metavar="PROFILE")
    classes: Sequence[int | str] | None = _cli(
        None, "comma-separated class ids or names to keep, in profile order (e.g. 0,6)", metavar="IDS")
    val_fraction: float = _cli(0.2, "validation share of the training pool (default: 0.2)", type=float)
    test_fraction: float = _cli(0.25, "share carved out as test when the source has no test split (default: 0.25)",
                                type=float)
    val_per_class: int | None = _cli(
        None, "a balanced validation set: this many images per class, held out of the pool before the imbalance "
        "profile (instead of val_fraction)", type=int, metavar="N")
    seed: int = _cli(0, "fixes every split and subset", type=int)
    image_size: int | tuple[int, int] | None = _cli(None, "resize to this square size", type=int)
    cache: bool = True
    csv_path_column: str | None = _cli(
        None, "csv: the image path column (default: the first of path, image, file, filename, ...)", metavar="NAME")
    csv_label_column: str | None = _cli(
        None, "csv: the label column (default: the first of label, class, target, y, category)", metavar="NAME")

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise DataError(f"dataset {self.dataset!r} is not known; choose one of {', '.join(DATASETS)}")
        if DATASETS[self.dataset].needs_root and self.root in (None, ""):
            raise DataError(f"dataset {self.dataset} needs a root (the folder or file to read)")
        if not DATASETS[self.dataset].needs_root and self.root not in (None, ""):
            # A root given with digits is almost surely a forgotten --dataset: say so, do not ignore it.
            raise DataError(
                f"dataset digits is bundled with scikit-learn and reads no root (got {self.root}); "
                f"drop the root, or name the dataset it holds ({', '.join(d for d in DATASETS if d != 'digits')})"
            )
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
                raise DataError(f"{name}={value!r} must be a number in [0, 1)")
        if self.val_per_class is not None and (isinstance(self.val_per_class, bool) or not isinstance(
                self.val_per_class, numbers.Integral) or self.val_per_class < 1):
            raise DataError(f"val_per_class={self.val_per_class!r} must be a positive integer (or None)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise DataError(f"seed={self.seed!r} must be a non-negative integer")



@dataclass
class SourceData:
    """What a source loader returns, before classes, imbalance and carving are applied.

    pools: ``train`` always; ``val`` and ``test`` where the source has official ones.
    groups: per-pool group ids (e.g. lesion ids) aligned with the pool, where known.
    """

    classes: list[str]
    pools: dict[str, ImageDataset]
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
