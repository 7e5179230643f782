"""Every dataset names its images (``ids``), and the names survive classes, imbalance and carving."""

import csv
from pathlib import Path

import numpy as np
import pytest

from asymcl.data import DataSpec, build_splits
from asymcl.data.isic import ISIC_CLASSES, submission_csv
from asymcl.errors import DataError
from data_fixtures import make_class_folder, make_fashion_mnist, make_isic


def _all(splits):
    return {name: ds for name, ds in splits.splits.items()}


def test_digits_ids_are_rows_of_sklearns_array_after_every_cut():
    from sklearn.datasets import load_digits

    raw = load_digits()
    splits = build_splits(DataSpec(classes=[3, 5, 8], imbalance="exp:4", seed=2))
    seen = []
    for name, ds in _all(splits).items():
        rows = ds.ids.astype(int)
        images, labels = ds.load_all()
        expected = np.rint(raw.images[rows] * (255.0 / 16.0)).astype(np.uint8)
        np.testing.assert_array_equal(images[:, 0].numpy(), expected, err_msg=name)
        np.testing.assert_array_equal(np.array([3, 5, 8])[labels.numpy()], raw.target[rows])
        if name != "test_imbalanced":  # a cut of test: its rows are in test too
            seen.extend(rows.tolist())
    assert len(seen) == len(set(seen))  # no image in two splits


def test_fashion_mnist_ids_index_their_own_file(tmp_path):
    from asymcl.data.idx import load_fashion_mnist_arrays

    root = make_fashion_mnist(tmp_path / "f")
    splits = build_splits(DataSpec(dataset="fashion-mnist", root=root, imbalance="exp:3"))
    for name, part in (("train", "train"), ("val", "train"), ("test", "test"), ("test_imbalanced", "test")):
        images, labels = load_fashion_mnist_arrays(root, part)
        ds = splits[name]
        np.testing.assert_array_equal(labels[ds.ids.astype(int)], ds.targets)
        np.testing.assert_array_equal(images[ds.ids.astype(int)], ds.images[..., 0])


def test_npz_ids_are_rows_of_the_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 5, 5), dtype=np.uint8)
    y = np.arange(60) % 3
    split = np.where(np.arange(60) % 5 == 0, "test", "train")
    np.savez(tmp_path / "d.npz", x=x, y=y, split=split)
    splits = build_splits(DataSpec(dataset="npz", root=tmp_path / "d.npz", classes=[2, 0]))
    for ds in splits.splits.values():
        rows = ds.ids.astype(int)
        np.testing.assert_array_equal(ds.images[..., 0], x[rows])
    assert set(splits["test"].ids.astype(int)) == {r for r in range(60) if r % 5 == 0 and y[r] != 1}


def test_folder_ids_are_paths_relative_to_the_root(tmp_path):
    root = make_class_folder(tmp_path / "imgs", {"cat": 9, "dog": 7})
    splits = build_splits(DataSpec(dataset="folder", root=root, imbalance="binary:2"))
    for ds in splits.splits.values():
        assert all(str(root / i) == p for i, p in zip(ds.ids, ds.paths, strict=True))
        assert all(i.split("/")[0] == ds.classes[t] for i, t in zip(ds.ids, ds.targets, strict=True))


def test_csv_ids_are_the_paths_as_written(tmp_path):
    make_class_folder(tmp_path / "imgs", {"a": 6, "b": 6})
    lines = ["file,label"] + [f"imgs/{c}/img{i:03d}.png,{c}" for c in "ab" for i in range(6)]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    splits = build_splits(DataSpec(dataset="csv", root=tmp_path / "list.csv", classes=["b", "a"]))
    written = {row["file"]: row["label"] for row in csv.DictReader((tmp_path / "list.csv").open())}
    for ds in splits.splits.values():
        for image, path, target in zip(ds.ids, ds.paths, ds.targets, strict=True):
            assert written[image] == ds.classes[target]
            assert Path(path) == tmp_path / image


def test_isic_ids_are_image_ids(tmp_path):
    written = make_isic(tmp_path / "isic")
    splits = build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic", imbalance="exp:2"))
    truth = dict(written["Training"] + written["Test"])
    for ds in splits.splits.values():
        assert all(Path(p).stem == i for i, p in zip(ds.ids, ds.paths, strict=True))
        assert all(ISIC_CLASSES[truth[i]] == ds.classes[t] for i, t in zip(ds.ids, ds.targets, strict=True))
    assert list(splits["test"].ids) == [image for image, _ in written["Test"]]
    assert splits.official == ("train", "test")


def test_submission_csv_reorders_to_the_ground_truths_columns():
    classes = list(reversed(ISIC_CLASSES))
    probs = np.eye(7)[:2] * 0.5 + 0.5 / 7
    text = submission_csv(["ISIC_1", "ISIC_2"], probs, classes)
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == ["image", *ISIC_CLASSES]
    # Row 0 puts its mass on classes[0] = VASC, the last official column.
    assert float(rows[1][7]) == pytest.approx(probs[0, 0]) and rows[1][0] == "ISIC_1"
    with pytest.raises(DataError, match="needs probabilities for all of MEL,NV"):
        submission_csv(["x"], np.ones((1, 2)) / 2, ["MEL", "NV"])
