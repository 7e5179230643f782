"""Sources: Fashion-MNIST IDX, ISIC 2018 layout, npz, folder, CSV, digits; and their bad inputs."""

from __future__ import annotations

import gzip
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch

from asymcl.data import DataSpec, build_splits
from asymcl.data.idx import read_idx
from asymcl.data.isic import read_ground_truth
from asymcl.errors import DataError
from data_fixtures import (
    ISIC_CLASSES,
    idx_bytes,
    make_class_folder,
    make_fashion_mnist,
    make_isic,
    write_idx,
    write_image,
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMCL_CACHE_DIR", str(tmp_path / "cache"))


def _check_item(dataset, index=0):
    image, label = dataset[index]
    assert image.dtype == torch.float32
    assert tuple(image.shape) == dataset.image_shape
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert isinstance(label, int) and 0 <= label < len(dataset.classes)


# ----------------------------------------------------------------------------- Fashion-MNIST IDX


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_gz_and_raw(tmp_path, gz):
    root = make_fashion_mnist(tmp_path / "fm", train_per_class=20, test_per_class=6, gz=gz)
    splits = build_splits(DataSpec(dataset="fashion-mnist", root=root, seed=0))
    assert splits.classes[0] == "T-shirt/top" and splits.classes[6] == "Shirt"
    counts = splits.counts()
    assert all(counts["test"][c] == 6 for c in splits.classes)
    assert all(counts["train"][c] + counts["val"][c] == 20 for c in splits.classes)
    assert all(counts["val"][c] == 4 for c in splits.classes)  # the default 20 % of 20
    train = splits.splits["train"]
    assert train.image_shape == (1, 28, 28) and train.num_channels == 1
    images, labels = train.load_all()
    assert images.dtype == torch.uint8 and images.shape == (len(train), 1, 28, 28)
    # the fixture encodes each label in the pixel values: labels and pixels stay paired
    assert torch.equal(images[:, 0, 0, 0].long(), labels * 20)
    _check_item(train)


def test_idx_wrong_magic(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((2, 3, 3)), gz=False, magic=b"\x12\x34\x08\x03")
    with pytest.raises(DataError, match=r"x-idx3-ubyte.*wrong magic.*asymcl data download fashion-mnist"):
        read_idx(path, 3)


def test_idx_truncated(tmp_path):
    data = idx_bytes(np.zeros((5, 4, 4)))
    raw = tmp_path / "short-idx3-ubyte"
    raw.write_bytes(data[:-7])
    with pytest.raises(DataError, match=r"short-idx3-ubyte is truncated.*asymcl data download fashion-mnist"):
        read_idx(raw, 3)
    # a gzip stream cut short is also named
    gz = tmp_path / "short-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(DataError, match=r"short-idx3-ubyte.gz.*asymcl data download"):
        read_idx(gz, 3)


def test_idx_wrong_dimensions(tmp_path):
    path = write_idx(tmp_path / "labels-idx1-ubyte", np.zeros((4, 2)), gz=False)
    with pytest.raises(DataError, match="2 dimensions, expected 1"):
        read_idx(path, 1)


def test_fashion_mnist_count_mismatch(tmp_path):
    root = make_fashion_mnist(tmp_path / "fm", train_per_class=3, test_per_class=2)
    write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte.gz has 20 images but .*t10k-labels.* has 7 labels.*asymcl data download fashion-mnist --root",
    ):
        build_splits(DataSpec(dataset="fashion-mnist", root=root))


def test_fashion_mnist_missing_file_and_folder(tmp_path):
    root = make_fashion_mnist(tmp_path / "fm", train_per_class=2, test_per_class=1)
    (root / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz .*is missing"):
        build_splits(DataSpec(dataset="fashion-mnist", root=root))
    with pytest.raises(DataError, match="does not exist"):
        build_splits(DataSpec(dataset="fashion-mnist", root=tmp_path / "nowhere"))


# ----------------------------------------------------------------------------- ISIC 2018


@pytest.mark.parametrize(
    "order,floats",
    [
        (ISIC_CLASSES, True),
        (list(reversed(ISIC_CLASSES)), False),
        (["NV", "VASC", "MEL", "DF", "BKL", "AKIEC", "BCC"], True),
    ],
)
def test_isic_columns_by_name_in_any_order(tmp_path, order, floats):
    written = make_isic(tmp_path / "isic", order=order, floats=floats)
    splits = build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic", image_size=8))
    assert splits.classes == ISIC_CLASSES
    counts = splits.counts()
    assert [counts["train"][c] + counts["val"][c] for c in ISIC_CLASSES] == [6, 10, 5, 4, 6, 4, 4]
    assert [counts["test"][c] for c in ISIC_CLASSES] == [2, 3, 2, 2, 2, 2, 2]
    test = splits.splits["test"]
    assert test.image_shape == (3, 8, 8) and test.num_channels == 3
    images, labels = test.load_all()
    assert images.shape == (len(test), 3, 8, 8)
    # pixel value 30 * label + 10 in the red channel: labels match the images (JPEG is lossy)
    assert torch.all((images[:, 0, 4, 4].float() - (30 * labels + 10).float()).abs() <= 4)
    # __getitem__ decodes lazily to the same pixels as load_all
    image, label = test[3]
    assert label == int(labels[3])
    assert torch.equal((image * 255).round().to(torch.uint8), images[3])
    # light enough to pickle into DataLoader workers: paths, not pixels
    assert len(pickle.dumps(test)) < 20_000
    assert len(written["Test"]) == len(test)


def test_isic_native_size_and_cache_reused(tmp_path):
    make_isic(tmp_path / "isic", metadata=False)
    splits = build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic"))
    test = splits.splits["test"]
    assert test.image_shape == (3, 10, 12)  # PIL size (12, 10) is width x height
    first, _ = test.load_all()
    cached = list((tmp_path / "cache" / "decoded").glob("*.npy"))
    assert len(cached) == 1
    second, _ = test.load_all()
    assert torch.equal(first, second)
    # the dataset root is never written to
    assert not any(p.suffix in (".npy", ".part") for p in (tmp_path / "isic").rglob("*"))


def test_isic_validation_grouped_by_lesion(tmp_path):
    written = make_isic(tmp_path / "isic", train_per_class=(8, 20, 8, 6, 8, 6, 6), images_per_lesion=3)
    lesion_of = written["lesion_of"]
    for seed in range(3):
        splits = build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic", val_fraction=0.25, seed=seed))
        names = lambda ds: {p.rsplit("/", 1)[-1][:-4] for p in ds.paths}  # noqa: E731
        train_lesions = {lesion_of[i] for i in names(splits.splits["train"])}
        val_lesions = {lesion_of[i] for i in names(splits.splits["val"])}
        assert val_lesions and train_lesions
        assert not train_lesions & val_lesions
        assert len(splits.splits["train"]) + len(splits.splits["val"]) == 62


def test_isic_official_validation_folder_used(tmp_path):
    make_isic(tmp_path / "isic", validation=True)
    splits = build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic"))
    assert list(splits.splits["val"].class_counts()) == [1] * 7
    assert len(splits.splits["train"]) == 39


def test_isic_non_one_hot_row_named(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text(
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,0.0,1.0,0.0,0.0,0.0,0.0,0.0\nISIC_2,1.0,1.0,0.0,0.0,0.0,0.0,0.0\n"
    )
    with pytest.raises(DataError, match=r"line 3 \(ISIC_2\).*not one-hot"):
        read_ground_truth(path)
    path.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,0,0,0,0,0,0,0\n")
    with pytest.raises(DataError, match=r"line 2 \(ISIC_1\).*not one-hot"):
        read_ground_truth(path)
    path.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,0,0.5,0,0,0,0,0\n")
    with pytest.raises(DataError, match=r"NV='0.5' is not 0 or 1"):
        read_ground_truth(path)


def test_isic_missing_and_unknown_columns(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF\nISIC_1,0,1,0,0,0,0\n")
    with pytest.raises(DataError, match="lacks the label column.*VASC"):
        read_ground_truth(path)
    path.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC,SCC\nISIC_1,0,1,0,0,0,0,0,0\n")
    with pytest.raises(DataError, match="unknown column.*SCC"):
        read_ground_truth(path)
    # A renamed column is reported as both: the missing name and the unknown one.
    path.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,Vascular\nISIC_1,0,1,0,0,0,0,0\n")
    with pytest.raises(DataError, match="lacks the label column.*VASC and has unknown column.*Vascular"):
        read_ground_truth(path)


def test_isic_missing_images_counted_and_named(tmp_path):
    written = make_isic(tmp_path / "isic")
    folder = tmp_path / "isic" / "ISIC2018_Task3_Training_Input"
    gone = [image for image, _ in written["Training"][:7]]
    for image in gone:
        (folder / f"{image}.jpg").unlink()
    with pytest.raises(DataError, match=rf"7 of \d+ images .* are missing: .*{gone[0]}.jpg.*\(and 2 more\)"):
        build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic"))


def test_isic_corrupt_image_named(tmp_path):
    written = make_isic(tmp_path / "isic")
    bad = written["Test"][0][0]
    (tmp_path / "isic" / "ISIC2018_Task3_Test_Input" / f"{bad}.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=rf"1 of \d+ images .*not readable images: .*{bad}.jpg"):
        build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic"))


def test_image_probe_is_remembered_until_a_file_changes(tmp_path, monkeypatch):
    """A sweep builds the same splits for every run: the files are probed once, and again only
    when one of them changes."""
    from asymcl.data import datasets

    written = make_isic(tmp_path / "isic", metadata=False)
    probed = []
    real = datasets._probe_images
    monkeypatch.setattr(datasets, "_probe_images", lambda paths, what: probed.append(what) or real(paths, what))
    spec = DataSpec(dataset="isic2018", root=tmp_path / "isic", decoded_cache=False)
    first = build_splits(spec)
    calls = len(probed)
    assert calls >= 1
    second = build_splits(spec)
    assert len(probed) == calls
    assert list(second.splits["test"].paths) == list(first.splits["test"].paths)
    bad = written["Test"][0][0]
    (tmp_path / "isic" / "ISIC2018_Task3_Test_Input" / f"{bad}.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=rf"not readable images: .*{bad}.jpg"):
        build_splits(spec)


def test_isic_truncated_jpeg_found_up_front_and_when_decoding(tmp_path):
    written = make_isic(tmp_path / "isic", metadata=False)
    bad = written["Test"][1][0]
    path = tmp_path / "isic" / "ISIC2018_Task3_Test_Input" / f"{bad}.jpg"
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    cut = data[: len(data) * 2 // 3]  # header intact, pixels cut off
    path.write_bytes(cut)
    # Found when the splits are built, before any training starts ...
    with pytest.raises(DataError, match=rf"1 of \d+ images .*not readable images: .*{bad}.jpg.*truncated"):
        build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic", decoded_cache=False))
    # ... and, for a file damaged after that, when it is decoded for training.
    path.write_bytes(data)
    splits = build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic", decoded_cache=False))
    path.write_bytes(cut)
    with pytest.raises(DataError, match=rf"images are missing or cannot be decoded: .*{bad}.jpg"):
        splits.splits["test"].load_all()
    with pytest.raises(DataError, match=rf"{bad}.jpg cannot be decoded"):
        splits.splits["test"][1]


def test_isic_not_an_isic_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not an ISIC 2018 Task 3 folder"):
        build_splits(DataSpec(dataset="isic2018", root=tmp_path / "empty"))


def test_isic_without_test_carves_grouped_test(tmp_path):
    make_isic(tmp_path / "isic", train_per_class=(8, 12, 8, 8, 8, 8, 8))
    shutil.rmtree(tmp_path / "isic" / "ISIC2018_Task3_Test_Input")
    (tmp_path / "isic" / "ISIC2018_Task3_Test_GroundTruth.csv").unlink()
    splits = build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic"))
    total = sum(len(ds) for ds in splits.splits.values())
    assert total == 60 and len(splits.splits["test"]) > 0


# ----------------------------------------------------------------------------- npz


def _npz(path, n=40, channels=None, **extra):
    rng = np.random.default_rng(0)
    shape = (n, 6, 5) if channels is None else (n, 6, 5, channels)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    y = np.arange(n) % 4
    np.savez(path, x=x, y=y, **extra)
    return x, y


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_npz_channels_and_carving(tmp_path, channels):
    x, y = _npz(tmp_path / "d.npz", n=80, channels=channels)
    splits = build_splits(DataSpec(dataset="npz", root=tmp_path / "d.npz"))
    assert splits.classes == ["0", "1", "2", "3"]
    expected_c = 3 if channels == 3 else 1
    train = splits.splits["train"]
    assert train.image_shape == (expected_c, 6, 5)
    assert list(splits.splits["test"].class_counts()) == [5, 5, 5, 5]  # 25 % of 20 per class
    assert sum(len(ds) for ds in splits.splits.values()) == 80
    _check_item(train)


def test_npz_split_classes_and_lesions(tmp_path):
    n = 60
    split = np.where(np.arange(n) < 40, "train", "test")
    lesion = np.where(np.arange(n) < 40, np.char.add("L", (np.arange(n) // 2).astype(str)), "")
    _npz(tmp_path / "d.npz", n=n, channels=3, classes=np.array(["a", "b", "c", "d"]), split=split, lesion_id=lesion)
    splits = build_splits(DataSpec(dataset="npz", root=tmp_path / "d.npz", val_fraction=0.2))
    assert splits.classes == ["a", "b", "c", "d"]
    assert len(splits.splits["test"]) == 20
    assert len(splits.splits["train"]) + len(splits.splits["val"]) == 40
    # lesion pairs (rows 2k, 2k+1) have different classes, so grouping is visible in the counts:
    # every val image's lesion partner is in val too
    images, _ = splits.splits["val"].load_all()
    assert len(images) % 2 == 0


def test_npz_bad_inputs(tmp_path):
    np.savez(tmp_path / "nox.npz", y=np.zeros(3, dtype=np.int64))
    with pytest.raises(DataError, match=r"nox.npz has no array 'x'"):
        build_splits(DataSpec(dataset="npz", root=tmp_path / "nox.npz"))
    np.savez(tmp_path / "noy.npz", x=np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"noy.npz has no array 'y'"):
        build_splits(DataSpec(dataset="npz", root=tmp_path / "noy.npz"))
    np.savez(tmp_path / "float.npz", x=np.zeros((3, 4, 4)), y=np.zeros(3, dtype=np.int64))
    with pytest.raises(DataError, match="must be uint8"):
        build_splits(DataSpec(dataset="npz", root=tmp_path / "float.npz"))
    np.savez(tmp_path / "obj.npz", x=np.zeros((3, 4, 4), dtype=np.uint8), y=np.array([0, 1, "a"], dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        build_splits(DataSpec(dataset="npz", root=tmp_path / "obj.npz"))
    np.savez(tmp_path / "len.npz", x=np.zeros((3, 4, 4), dtype=np.uint8), y=np.zeros(4, dtype=np.int64))
    with pytest.raises(DataError, match=r"y has shape \(4,\)"):
        build_splits(DataSpec(dataset="npz", root=tmp_path / "len.npz"))
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="junk.npz cannot be read"):
        build_splits(DataSpec(dataset="npz", root=tmp_path / "junk.npz"))


# ----------------------------------------------------------------------------- folder and CSV


def test_folder_grey_and_rgb(tmp_path):
    make_class_folder(tmp_path / "grey", {"cat": 8, "dog": 12}, mode="L")
    splits = build_splits(DataSpec(dataset="folder", root=tmp_path / "grey"))
    assert splits.classes == ["cat", "dog"]
    assert splits.splits["train"].num_channels == 1
    assert sum(len(ds) for ds in splits.splits.values()) == 20
    assert list(splits.splits["test"].class_counts()) == [2, 3]
    make_class_folder(tmp_path / "rgb", {"a": 4, "b": 4}, mode="RGB", ext=".jpg")
    rgb = build_splits(DataSpec(dataset="folder", root=tmp_path / "rgb", image_size=(4, 6)))
    assert rgb.splits["train"].image_shape == (3, 4, 6)
    _check_item(rgb.splits["train"])


def test_folder_with_split_folders_and_empty_class(tmp_path):
    make_class_folder(tmp_path / "s" / "train", {"x": 5, "y": 5})
    make_class_folder(tmp_path / "s" / "test", {"x": 2, "y": 3})
    splits = build_splits(DataSpec(dataset="folder", root=tmp_path / "s"))
    assert list(splits.splits["test"].class_counts()) == [2, 3]
    assert len(splits.splits["train"]) + len(splits.splits["val"]) == 10
    (tmp_path / "e" / "empty").mkdir(parents=True)
    make_class_folder(tmp_path / "e", {"full": 3})
    with pytest.raises(DataError, match=r"class folder .*empty holds no images"):
        build_splits(DataSpec(dataset="folder", root=tmp_path / "e"))
    with pytest.raises(DataError, match="does not exist"):
        build_splits(DataSpec(dataset="folder", root=tmp_path / "missing"))


def test_csv_names_ints_and_split_column(tmp_path):
    for i in range(12):
        write_image(tmp_path / "imgs" / f"{i}.png", i * 10)
    rows = [f"imgs/{i}.png,{'benign' if i % 3 else 'malignant'}" for i in range(12)]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    splits = build_splits(DataSpec(dataset="csv", root=tmp_path / "labels.csv"))
    assert splits.classes == ["benign", "malignant"]
    assert sum(len(ds) for ds in splits.splits.values()) == 12
    rows = [f"imgs/{i}.png,{i % 3},{'test' if i >= 9 else 'train'}" for i in range(12)]
    (tmp_path / "ints.csv").write_text("image,class,split\n" + "\n".join(rows) + "\n")
    splits = build_splits(DataSpec(dataset="csv", root=tmp_path / "ints.csv"))
    assert splits.classes == ["0", "1", "2"]
    assert list(splits.splits["test"].class_counts()) == [1, 1, 1]
    _check_item(splits.splits["test"])


def test_csv_bad_inputs(tmp_path):
    write_image(tmp_path / "a.png", 1)
    (tmp_path / "nolabel.csv").write_text("path,kind\na.png,x\n")
    with pytest.raises(DataError, match="nolabel.csv has no label column"):
        build_splits(DataSpec(dataset="csv", root=tmp_path / "nolabel.csv"))
    (tmp_path / "missing.csv").write_text("path,label\na.png,x\nb.png,y\nc.png,y\n")
    with pytest.raises(DataError, match=r"2 of 3 images .* missing: .*b.png"):
        build_splits(DataSpec(dataset="csv", root=tmp_path / "missing.csv"))
    (tmp_path / "empty.csv").write_text("path,label\na.png,\n")
    with pytest.raises(DataError, match="line 2: the image path or the label is empty"):
        build_splits(DataSpec(dataset="csv", root=tmp_path / "empty.csv"))


# ----------------------------------------------------------------------------- digits


def test_digits_default_needs_nothing():
    splits = build_splits(DataSpec())
    train = splits.splits["train"]
    assert splits.classes == [str(d) for d in range(10)]
    assert train.image_shape == (1, 8, 8)
    images, labels = train.load_all()
    assert images.dtype == torch.uint8 and int(images.max()) == 255
    assert sum(len(ds) for ds in splits.splits.values()) == 1797
    # test is a stratified 25 %: every class has round(0.25 * n_c) test images
    from sklearn.datasets import load_digits

    pool = np.bincount(load_digits().target)
    assert np.array_equal(splits.splits["test"].class_counts(), np.rint(0.25 * pool).astype(int))
    _check_item(train)


def test_file_dataset_in_dataloader_workers(tmp_path):
    make_isic(tmp_path / "isic", metadata=False)
    splits = build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic", image_size=6))
    test = splits.splits["test"]
    loader = torch.utils.data.DataLoader(test, batch_size=5, num_workers=2)
    images = torch.cat([batch for batch, _ in loader])
    expected, _ = test.load_all()
    assert torch.equal((images * 255).round().to(torch.uint8), expected)


def test_unreadable_csv_files_are_one_clear_error(tmp_path):
    """Non-UTF-8 bytes, CSV syntax errors and short metadata rows name the file and line."""
    from asymcl.data.isic import read_lesion_ids

    latin = tmp_path / "gt.csv"
    latin.write_bytes(b"image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_\xe9,1,0,0,0,0,0,0\n")
    with pytest.raises(DataError, match=r"gt.csv line 2 is not UTF-8 text.*save it as UTF-8"):
        read_ground_truth(latin)
    huge = tmp_path / "huge.csv"
    huge.write_text("path,label\n" + "a" * 200_000 + ",x\n")
    with pytest.raises(DataError, match=r"huge.csv line \d+: not valid CSV \(field larger"):
        build_splits(DataSpec(dataset="csv", root=huge))
    metadata = tmp_path / "HAM10000_metadata.csv"
    metadata.write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\nHAM_2\n")
    with pytest.raises(DataError, match=r"HAM10000_metadata.csv line 3: 1 fields, the header has 3"):
        read_lesion_ids(metadata)
    metadata.write_text("image_id,lesion_id\nISIC_1,HAM_1\n")
    assert read_lesion_ids(metadata) == {"ISIC_1": "HAM_1"}


def test_file_dataset_refuses_to_decode_more_than_fits_in_memory(tmp_path, monkeypatch):
    import asymcl.data.datasets as datasets_module

    make_isic(tmp_path / "isic", metadata=False)
    splits = build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic", image_size=20000, decoded_cache=False))
    monkeypatch.setattr(datasets_module, "_physical_memory_bytes", lambda: 8 * 2**30)
    with pytest.raises(DataError, match=r"image_size 20000x20000 for \d+ images .* GiB.*in_memory false"):
        splits.splits["train"].load_all()


def test_read_only_arrays_load_without_a_torch_warning():
    # One-channel images come back from an .npz read-only, and their (N, 1, H, W) view is already
    # contiguous: torch.from_numpy warned about it on every Fashion-MNIST run.
    from asymcl.data.datasets import ArrayImageDataset

    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    images.flags.writeable = False
    dataset = ArrayImageDataset(images, np.array([0, 1]), ["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch, _ = dataset.load_all()
        first, _ = dataset[0]
    assert torch.equal(batch[0, 0], torch.from_numpy(images[0, :, :, 0].copy()))
    assert torch.allclose(first * 255, batch[0].float())
