"""Source loaders: each turns files on disk into a :class:`~asymcl.data.splits.SourceData`.

Images keep their native channel count (1 for grey, 3 for RGB). Small datasets (digits,
Fashion-MNIST, npz) are held in memory as uint8 arrays; image files (ISIC, folder, CSV) are
decoded lazily, see :class:`~asymcl.data.datasets.FileImageDataset`.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from asymcl.data.datasets import (
    ArrayImageDataset,
    FileImageDataset,
    check_files_exist,
    normalize_image_size,
    probe_images,
    resize_array,
)
from asymcl.data.isic import read_csv_rows
from asymcl.data.spec import DATASETS, IMAGE_SUFFIXES, DataSpec, SourceData
from asymcl.errors import DataError

_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def load_source(spec: DataSpec) -> SourceData:
    """The source's pools, read by the loader of its :data:`~asymcl.data.spec.DATASETS` entry."""
    return DATASETS[spec.dataset].load(spec)


def _root(spec: DataSpec) -> Path:
    """The file or folder a loader reads; DataSpec's checks require one for every such dataset."""
    if spec.root in (None, ""):
        raise DataError(f"dataset={spec.dataset} needs a root: set data.root to the folder or file to read")
    return Path(str(spec.root))


def _array_source(images: np.ndarray, targets: np.ndarray, classes: list[str], spec: DataSpec) -> ArrayImageDataset:
    if images.ndim == 3:
        images = images[:, :, :, None]
    images = resize_array(np.ascontiguousarray(images), normalize_image_size(spec.image_size))
    return ArrayImageDataset(images, targets, classes)


def load_digits(spec: DataSpec) -> SourceData:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16), no official test split.

    The values are scaled to uint8 (v * 255 / 16, rounded: the 17 levels stay distinct), so the
    image tensors are in [0, 1]. The test set is carved by :func:`build_splits`
    (``test_fraction``, stratified, seeded).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    classes = [str(int(c)) for c in bunch.target_names]
    dataset = _array_source(images, bunch.target.astype(np.int64), classes, spec)
    return SourceData(classes=classes, pools={"train": dataset}, notes=["digits: sklearn bundled"])


def load_fashion_mnist(spec: DataSpec) -> SourceData:
    from asymcl.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist_arrays

    root = _root(spec)
    pools = {}
    for split in ("train", "test"):
        images, labels = load_fashion_mnist_arrays(root, split)
        pools[split] = _array_source(images, labels, FASHION_MNIST_CLASSES, spec)
    return SourceData(classes=list(FASHION_MNIST_CLASSES), pools=pools)


def load_npz(spec: DataSpec) -> SourceData:
    """An .npz with ``x`` (N,H,W) or (N,H,W,C) uint8 and ``y`` (N,) int.

    Optional: ``classes`` (names, label k is classes[k]), ``split`` (train / val / test per row;
    without it the test and validation sets are carved), ``lesion_id`` (group ids: a validation
    split carved from training keeps each group on one side; "" = no group).
    """
    path = _root(spec)
    if not path.is_file():
        state = "is a folder, not a file" if path.exists() else "does not exist"
        raise DataError(f"npz file {path} {state}; --root takes the .npz file itself")
    if not zipfile.is_zipfile(path):
        raise DataError(f"npz file {path} cannot be read: it is not an .npz (zip) archive")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise DataError(
            f"npz file {path} holds Python objects ({exc}); store plain arrays (strings as "
            "fixed-width unicode, e.g. np.array(names, dtype=str))"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"npz file {path} cannot be read ({exc})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(
                f"npz file {path} has no array {key!r} (it has: {', '.join(arrays) or 'nothing'}); "
                "it needs x (N,H,W[,C]) uint8 and y (N,) int"
            )
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.uint8:
        raise DataError(f"npz file {path}: x is {x.dtype}, it must be uint8 (0..255)")
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise DataError(f"npz file {path}: x has shape {x.shape}; expected (N,H,W), (N,H,W,1) or (N,H,W,3)")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"npz file {path}: y has shape {y.shape}; expected ({x.shape[0]},) to match x")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"npz file {path}: y is {y.dtype}; it must hold integer class ids")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"npz file {path}: y holds the negative label {y.min()}")
    if "classes" in arrays:
        classes = [str(c) for c in np.asarray(arrays["classes"]).reshape(-1)]
        if y.size and y.max() >= len(classes):
            raise DataError(f"npz file {path}: y holds label {y.max()} but classes names only {len(classes)}")
    else:
        classes = [str(c) for c in range(int(y.max()) + 1 if y.size else 0)]
    groups = None
    if "lesion_id" in arrays:
        groups = np.asarray(arrays["lesion_id"]).astype(str)
        if groups.shape != y.shape:
            raise DataError(f"npz file {path}: lesion_id has shape {groups.shape}, y has {y.shape}")
        if not np.any(groups != ""):
            groups = None
    full = _array_source(x, y, classes, spec)
    if "split" not in arrays:
        source = SourceData(classes=classes, pools={"train": full})
        if groups is not None:
            source.groups["train"] = groups
        return source
    split = np.char.lower(np.char.strip(np.asarray(arrays["split"]).astype(str)))
    if split.shape != y.shape:
        raise DataError(f"npz file {path}: split has shape {split.shape}, y has {y.shape}")
    unknown = sorted(set(split.tolist()) - set(_SPLIT_NAMES))
    if unknown:
        raise DataError(f"npz file {path}: split holds {', '.join(map(repr, unknown))}; use train, val or test")
    canonical = np.vectorize(_SPLIT_NAMES.get, otypes=[str])(split) if split.size else split
    pools, pool_groups = {}, {}
    for name in ("train", "val", "test"):
        rows = np.flatnonzero(canonical == name)
        if rows.size:
            pools[name] = full.subset(rows)
            if groups is not None:
                pool_groups[name] = groups[rows]
    if "train" not in pools:
        raise DataError(f"npz file {path}: no row has split 'train'")
    return SourceData(classes=classes, pools=pools, groups=pool_groups)


def _file_pools(
    rows: dict[str, tuple[list[str], np.ndarray]],
    classes: list[str],
    spec: DataSpec,
    what: str,
    ids: dict[str, list[str]],
) -> dict[str, FileImageDataset]:
    """All splits share one channel count and one image size (the first training image's).

    ``ids``: per split, each image's name in the source (see :class:`ImageDataset`)."""
    all_paths = [p for paths, _ in rows.values() for p in paths]
    check_files_exist(all_paths, what)
    channels, native = probe_images(all_paths, what)
    size = normalize_image_size(spec.image_size) or native
    return {
        name: FileImageDataset(paths, labels, classes, channels, size, cache=spec.decoded_cache, ids=ids[name])
        for name, (paths, labels) in rows.items()
    }


def load_isic2018(spec: DataSpec) -> SourceData:
    from asymcl.data.isic import ISIC_CLASSES, find_isic_parts, read_ground_truth, read_lesion_ids

    root = _root(spec)
    parts = find_isic_parts(root)
    rows: dict[str, tuple[list[str], np.ndarray]] = {}
    ids: dict[str, list[str]] = {}
    for split, (folder, truth) in parts.items():
        images, labels = read_ground_truth(truth)
        ids[split] = images
        rows[split] = ([str(folder / f"{image}.jpg") for image in images], labels)
    pools = _file_pools(rows, ISIC_CLASSES, spec, f"the ISIC 2018 ground truth in {root}", ids)
    source = SourceData(classes=list(ISIC_CLASSES), pools=pools)
    metadata = root / "HAM10000_metadata.csv"
    if metadata.is_file():
        lesions = read_lesion_ids(metadata)
        # An image missing from the metadata is its own group (it cannot leak with itself).
        source.groups["train"] = np.asarray([lesions.get(i, "") for i in ids["train"]], dtype=str)
        source.notes.append(f"lesion ids from {metadata.name}")
    return source


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_folder(spec: DataSpec) -> SourceData:
    """ROOT/<class>/<image>, class names sorted; or ROOT/{train,val,test}/<class>/<image>.

    With split sub-folders (``train`` required; ``val``/``valid``/``validation`` and ``test``
    optional) those are the splits; otherwise test and validation are carved, stratified.
    An empty class folder is an error.
    """
    root = _root(spec)
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {root} {state}; --root takes a folder with one sub-folder per class")
    subdirs = _class_folders(root)
    split_dirs = {_SPLIT_NAMES[d.name.lower()]: d for d in subdirs if d.name.lower() in _SPLIT_NAMES}
    if split_dirs and len(split_dirs) == len(subdirs):
        if "train" not in split_dirs:
            raise DataError(f"{root} has split folders {', '.join(d.name for d in subdirs)} but no train/")
        bases = split_dirs
    else:
        bases = {"train": root}
    classes = [d.name for d in _class_folders(bases["train"])]
    if not classes:
        raise DataError(f"{bases['train']} has no class sub-folders; put the images in <root>/<class name>/")
    rows: dict[str, tuple[list[str], np.ndarray]] = {}
    ids: dict[str, list[str]] = {}
    for split, base in bases.items():
        names = [d.name for d in _class_folders(base)]
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"{base} has class folder(s) {', '.join(unknown)} that train/ does not have")
        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            folder = base / name
            files = _list_images(folder) if folder.is_dir() else []
            if not files and split == "train":
                raise DataError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(str(p) for p in files)
            labels.extend([label] * len(files))
        rows[split] = (paths, np.asarray(labels, dtype=np.int64))
        # Relative to the root, "/"-separated: stable when the folder moves or changes machine.
        ids[split] = [Path(p).relative_to(root).as_posix() for p in paths]
    pools = _file_pools(rows, classes, spec, f"the image folder {root}", ids)
    return SourceData(classes=classes, pools=pools)


_PATH_COLUMNS = ("path", "image", "file", "filename", "image_path", "filepath")
_LABEL_COLUMNS = ("label", "class", "target", "y", "category")


def _pick_column(
    header: list[str], given: str | None, candidates: tuple[str, ...], what: str, option: str, path: Path
) -> int:
    lowered = [h.strip().lower() for h in header]
    if given is not None:
        if given not in header:
            raise DataError(f"CSV file {path} has no {what} column {given!r} (header: {','.join(header)})")
        return header.index(given)
    for name in candidates:
        if name in lowered:
            return lowered.index(name)
    raise DataError(
        f"CSV file {path} has no {what} column: name it one of {', '.join(candidates)} "
        f"or pass its name with --{option.replace('_', '-')} (DataSpec.{option}; "
        f"header: {','.join(header)})"
    )


def load_csv(spec: DataSpec) -> SourceData:
    """A CSV of (image path, label[, split]); paths relative to the CSV's folder.

    Labels are class names or integer ids. Integer labels 0..max become classes "0".."max";
    names are sorted. An optional ``split`` column (train / val / test) fixes the splits;
    without it test and validation are carved, stratified.
    """
    path = _root(spec)
    if not path.is_file():
        state = "is a folder, not a file" if path.exists() else "does not exist"
        raise DataError(f"CSV file {path} {state}; --root takes the CSV file itself")
    rows_in = read_csv_rows(path, "CSV file")
    header = [h.strip() for h in next(rows_in, (0, []))[1]]
    if not header:
        raise DataError(f"CSV file {path} is empty")
    path_col = _pick_column(header, spec.csv_path_column, _PATH_COLUMNS, "image path", "csv_path_column", path)
    label_col = _pick_column(header, spec.csv_label_column, _LABEL_COLUMNS, "label", "csv_label_column", path)
    lowered = [h.lower() for h in header]
    split_col = lowered.index("split") if "split" in lowered else None
    records: list[tuple[str, str, str]] = []
    for line, row in rows_in:
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}")
        image, label = row[path_col].strip(), row[label_col].strip()
        if not image or not label:
            raise DataError(f"{path} line {line}: the image path or the label is empty")
        split = "train"
        if split_col is not None:
            raw = row[split_col].strip().lower()
            if raw not in _SPLIT_NAMES:
                raise DataError(f"{path} line {line}: split {row[split_col]!r} is not train, val or test")
            split = _SPLIT_NAMES[raw]
        records.append((image, label, split))
    if not records:
        raise DataError(f"CSV file {path} lists no images")
    labels_text = [r[1] for r in records]
    if all(t.lstrip("-").isdigit() for t in labels_text):
        values = [int(t) for t in labels_text]
        if min(values) < 0:
            raise DataError(f"CSV file {path} holds the negative label {min(values)}")
        classes = [str(c) for c in range(max(values) + 1)]
        label_ids = values
    else:
        classes = sorted(set(labels_text))
        index = {name: k for k, name in enumerate(classes)}
        label_ids = [index[t] for t in labels_text]
    base = path.parent
    rows: dict[str, tuple[list[str], np.ndarray]] = {}
    ids: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        chosen = [k for k, r in enumerate(records) if r[2] == split]
        if chosen:
            paths = [str(base / records[k][0]) if not os.path.isabs(records[k][0]) else records[k][0] for k in chosen]
            rows[split] = (paths, np.asarray([label_ids[k] for k in chosen], dtype=np.int64))
            ids[split] = [records[k][0] for k in chosen]  # as written: joins back to the user's CSV
    if "train" not in rows:
        raise DataError(f"CSV file {path}: no row has split 'train'")
    pools = _file_pools(rows, classes, spec, f"CSV file {path}", ids)
    return SourceData(classes=classes, pools=pools)
