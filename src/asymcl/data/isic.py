"""ISIC 2018 Task 3 (HAM10000) in its official layout.

    ROOT/ISIC2018_Task3_Training_Input/<image>.jpg
    ROOT/ISIC2018_Task3_Training_GroundTruth.csv      (or inside ..._GroundTruth/ as in the zips)
    ROOT/ISIC2018_Task3_Validation_Input/ + ..._Validation_GroundTruth.csv   (optional)
    ROOT/ISIC2018_Task3_Test_Input/ + ..._Test_GroundTruth.csv               (optional)
    ROOT/HAM10000_metadata.csv                                               (optional)

Ground-truth CSVs: an ``image`` column and one column per class, one-hot. Columns are read by
their header names (files in the wild reorder them); cells may be ``0``/``1`` or ``0.0``/``1.0``.
The classes are always in the official order MEL, NV, BCC, AKIEC, BKL, DF, VASC.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from asymcl.errors import DataError

ISIC_CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
_PARTS = {"train": "Training", "val": "Validation", "test": "Test"}


def read_csv_rows(path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each row of a UTF-8 CSV; DataError names the file and line.

    The whole file is decoded first so that a file in another encoding (or not text at all)
    is one clear error instead of a UnicodeDecodeError from inside the csv module.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{what} {path} line {line} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{what} {path} line {reader.line_num}: not valid CSV ({exc})") from None
        yield reader.line_num, row


def read_ground_truth(path: Path) -> tuple[list[str], np.ndarray]:
    """(image ids, labels int64 in ISIC_CLASSES order) from an official ground-truth CSV."""
    rows = read_csv_rows(path, "ground-truth file")
    header = next(rows, (0, None))[1]
    if not header:
        raise DataError(f"ground-truth file {path} is empty")
    header = [h.strip() for h in header]
    if "image" not in header:
        raise DataError(f"ground-truth file {path} has no 'image' column (header: {','.join(header)})")
    # Both lists in one message: a renamed column (VASC -> Vascular) is one missing and one
    # unknown name, and seeing both is what tells the user which column to rename.
    missing = [c for c in ISIC_CLASSES if c not in header]
    unknown = [h for h in header if h not in ISIC_CLASSES and h != "image"]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"lacks the label column(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"has unknown column(s) {', '.join(unknown)}")
        raise DataError(
            f"ground-truth file {path} {' and '.join(problems)}; "
            f"expected the header image,{','.join(ISIC_CLASSES)} in any order"
        )
    if len(set(header)) != len(header):
        raise DataError(f"ground-truth file {path} repeats a column name: {','.join(header)}")
    image_col = header.index("image")
    label_cols = [header.index(c) for c in ISIC_CLASSES]
    images: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for line, row in rows:
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}")
        image = row[image_col].strip()
        values = []
        for col in label_cols:
            cell = row[col].strip()
            try:
                value = float(cell)
            except ValueError:
                value = None  # not a number: the same error as any other value but 0 or 1
            if value not in (0.0, 1.0):
                raise DataError(f"{path} line {line} ({image}): {header[col]}={cell!r} is not 0 or 1")
            values.append(value)
        if sum(values) != 1.0:
            raise DataError(
                f"{path} line {line} ({image}): the label columns are not one-hot "
                f"({sum(values):g} ones); each row needs exactly one 1"
            )
        if image in seen:
            raise DataError(f"{path} line {line}: image {image} is listed twice")
        seen.add(image)
        images.append(image)
        labels.append(values.index(1.0))
    if not images:
        raise DataError(f"ground-truth file {path} lists no images")
    return images, np.asarray(labels, dtype=np.int64)


def submission_csv(image_ids: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]) -> str:
    """The ISIC 2018 Task 3 submission format as CSV text: a header ``image,MEL,NV,...`` (the
    ground truth's columns, :data:`ISIC_CLASSES` order) and one row per image with its class
    probabilities, so the challenge's own scorer reads it.

    ``probabilities`` (N, K) are in the order of ``classes``, which must be the seven ISIC classes
    in any order (a run on a subset of them cannot be scored: DataError).
    """
    classes = [str(c) for c in classes]
    if sorted(classes) != sorted(ISIC_CLASSES):
        raise DataError(
            f"an ISIC 2018 submission needs probabilities for all of {','.join(ISIC_CLASSES)}; "
            f"this model predicts {','.join(classes)} (train on every class: leave data.classes unset)"
        )
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(image_ids), len(classes)):
        raise ValueError(f"probabilities have shape {probabilities.shape}, expected ({len(image_ids)}, {len(classes)})")
    order = [classes.index(c) for c in ISIC_CLASSES]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", *ISIC_CLASSES])
    for image, row in zip(image_ids, probabilities[:, order], strict=True):
        writer.writerow([str(image), *(f"{p:.6g}" for p in row)])
    return text.getvalue()


#: The challenge submission of a run's official test set, in the run directory.
SUBMISSION_FILE = "submission_isic2018_test.csv"


def submission_outputs(
    *, split: str, official: bool, ids: Sequence[str], probs: np.ndarray, classes: Sequence[str]
) -> dict[str, bytes]:
    """The isic2018 entry's extra run output (``DatasetInfo.outputs``): the challenge submission
    file, for the official test split of a run on all seven classes (nothing otherwise)."""
    if split != "test" or not official or sorted(map(str, classes)) != sorted(ISIC_CLASSES):
        return {}
    return {SUBMISSION_FILE: submission_csv(ids, probs, classes).encode()}


def _ground_truth_path(root: Path, part: str) -> Path | None:
    name = f"ISIC2018_Task3_{part}_GroundTruth"
    for candidate in (root / f"{name}.csv", root / name / f"{name}.csv"):
        if candidate.is_file():
            return candidate
    return None


def read_lesion_ids(path: Path) -> dict[str, str]:
    """image_id -> lesion_id from HAM10000_metadata.csv."""
    rows = read_csv_rows(path, "metadata file")
    fields = [f.strip() for f in next(rows, (0, []))[1]]
    if "image_id" not in fields or "lesion_id" not in fields:
        raise DataError(f"metadata file {path} needs columns image_id and lesion_id (has {','.join(fields) or 'none'})")
    image_col, lesion_col = fields.index("image_id"), fields.index("lesion_id")
    lesions: dict[str, str] = {}
    for line, row in rows:
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) <= max(image_col, lesion_col):
            raise DataError(f"{path} line {line}: {len(row)} fields, the header has {len(fields)}")
        lesions[row[image_col].strip()] = row[lesion_col].strip()
    return lesions


def training_counts(root: Path) -> list[int]:
    """Images per class (in :data:`ISIC_CLASSES` order) of the training ground truth under ``root``,
    read from the CSV alone: the pool an imbalance profile acts on (the loader refuses a listed image
    that is missing, so the CSV's counts are the pool's)."""
    _, truth = find_isic_parts(Path(root))["train"]
    _, labels = read_ground_truth(truth)
    return [int(n) for n in np.bincount(labels, minlength=len(ISIC_CLASSES))]


def find_isic_parts(root: Path) -> dict[str, tuple[Path, Path]]:
    """split -> (image folder, ground-truth CSV) for each part present; training is required."""
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"ISIC 2018 folder {root} {state}; --root takes the folder that holds ISIC2018_Task3_*")
    parts: dict[str, tuple[Path, Path]] = {}
    for split, part in _PARTS.items():
        folder = root / f"ISIC2018_Task3_{part}_Input"
        truth = _ground_truth_path(root, part)
        if folder.is_dir() and truth is None:
            raise DataError(
                f"{folder} exists but its ground truth ISIC2018_Task3_{part}_GroundTruth.csv is missing in {root}"
            )
        if truth is not None and not folder.is_dir():
            raise DataError(f"{truth} exists but the image folder {folder} is missing")
        if truth is not None:
            parts[split] = (folder, truth)
    if "train" not in parts:
        raise DataError(
            f"{root} is not an ISIC 2018 Task 3 folder: ISIC2018_Task3_Training_Input/ and "
            "ISIC2018_Task3_Training_GroundTruth.csv are missing"
        )
    return parts
