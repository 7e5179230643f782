"""`asymcl data summary` / `asymcl data download`, and the real data in ../shared when present."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from asymcl.cli import main
from asymcl.data import download as download_module
from asymcl.errors import DataError
from data_fixtures import make_fashion_mnist, make_isic, write_idx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMCL_CACHE_DIR", str(tmp_path / "cache"))


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_json_after_imbalance(tmp_path, capsys):
    root = make_fashion_mnist(tmp_path / "fm", train_per_class=20, test_per_class=10)
    code, out, err = _run(
        capsys,
        "data",
        "summary",
        "--dataset",
        "fashion-mnist",
        "--root",
        str(root),
        "--imbalance",
        "binary:5",
        "--classes",
        "0,6",
        "--seed",
        "0",
        "--json",
    )
    assert code == 0, err
    payload = json.loads(out)  # exactly one JSON object
    assert payload["dataset"] == "fashion-mnist"
    assert payload["classes"] == ["T-shirt/top", "Shirt"]
    splits = payload["splits"]
    assert set(splits) == {"train", "val", "test", "test_imbalanced"}
    assert splits["train"]["T-shirt/top"] + splits["val"]["T-shirt/top"] == 20
    assert splits["train"]["Shirt"] + splits["val"]["Shirt"] == 4
    assert splits["test"] == {"T-shirt/top": 10, "Shirt": 10}
    assert splits["test_imbalanced"] == {"T-shirt/top": 10, "Shirt": 2}


def test_summary_text_lists_classes_and_counts(tmp_path, capsys):
    make_isic(tmp_path / "isic")
    code, out, _ = _run(capsys, "data", "summary", "--dataset", "isic2018", "--root", str(tmp_path / "isic"))
    assert code == 0
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("class"))
    assert header.split() == ["class", "train", "val", "test"]
    rows = {line.split()[1]: [int(v) for v in line.split()[2:]] for line in lines if line[:1].isdigit()}
    assert list(rows) == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert [r[0] + r[1] for r in rows.values()] == [6, 10, 5, 4, 6, 4, 4]
    assert [r[2] for r in rows.values()] == [2, 3, 2, 2, 2, 2, 2]
    assert "grouped by lesion" in out


def test_summary_digits_without_root(capsys):
    code, out, _ = _run(capsys, "data", "summary", "--dataset", "digits", "--json", "--imbalance", "step:10")
    payload = json.loads(out)
    assert code == 0 and payload["classes"] == [str(d) for d in range(10)]
    assert payload["splits"]["test_imbalanced"]["9"] < payload["splits"]["test_imbalanced"]["0"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dataset", "digits", "--imbalance", "exp:0.5"], "ratio 0.5"),
        (["--dataset", "digits", "--classes", "0,12"], "class id 12 is out of range"),
        (["--dataset", "fashion-mnist", "--root", "/nonexistent/fm"], "/nonexistent/fm does not exist"),
        (["--dataset", "npz"], "needs a root"),
        (["--dataset", "digits", "--imbalance", "binary:10"], "needs exactly two classes"),
    ],
)
def test_summary_bad_input_one_line_exit_2(capsys, argv, message):
    code, out, err = _run(capsys, "data", "summary", *argv)
    assert code == 2
    assert message in err and err.startswith("asymcl: error:") and len(err.strip().splitlines()) == 1
    assert out == ""


def test_summary_corrupt_idx_no_traceback(tmp_path):
    root = make_fashion_mnist(tmp_path / "fm", train_per_class=2, test_per_class=1)
    write_idx(root / "train-images-idx3-ubyte", np.zeros((3, 28, 28)), magic=b"\x08\x08\x08\x03")
    proc = subprocess.run(
        [sys.executable, "-m", "asymcl", "data", "summary", "--dataset", "fashion-mnist", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "train-images-idx3-ubyte.gz has a wrong magic number" in proc.stderr


# ----------------------------------------------------------------------------- download


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        if self.path.endswith("/broken/") or "/error/" in self.path:
            self.send_error(500, "server exploded")
            return
        if "/short/" in self.path or "/stall/" in self.path:
            # Promise 100 kB, send 5 kB; then drop the connection, or hang like a dead network.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"x" * 5000)
            self.wfile.flush()
            if "/stall/" in self.path:
                self.server.release.wait(30)
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_Handler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def served_fashion_mnist(file_server, monkeypatch, tmp_path):
    served, url = file_server
    make_fashion_mnist(served / "fm", train_per_class=3, test_per_class=2)
    table = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted((served / "fm").iterdir())}
    assert len(table) == 4
    monkeypatch.setattr(download_module, "FASHION_MNIST_MD5", table)
    return served, url, table


def test_download_then_skip_then_load(tmp_path, capsys, served_fashion_mnist):
    _, url, table = served_fashion_mnist
    dest = tmp_path / "dest"
    code, out, err = _run(capsys, "data", "download", "fashion-mnist", "--root", str(dest), "--base-url", url + "/fm")
    assert code == 0, err
    assert out.count("downloaded") == 4
    assert {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in dest.iterdir()} == table
    code, out, _ = _run(capsys, "data", "download", "fashion-mnist", "--root", str(dest), "--base-url", url + "/fm")
    assert code == 0 and out.count("present") == 4
    # a damaged local file is fetched again
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    code, out, _ = _run(capsys, "data", "download", "fashion-mnist", "--root", str(dest), "--base-url", url + "/fm")
    assert out.count("present") == 3 and "downloaded  t10k-labels-idx1-ubyte.gz" in out
    code, out, _ = _run(capsys, "data", "summary", "--dataset", "fashion-mnist", "--root", str(dest), "--json")
    assert sum(json.loads(out)["splits"]["test"].values()) == 20


def test_download_corrupt_file_leaves_nothing(tmp_path, served_fashion_mnist):
    served, url, table = served_fashion_mnist
    (served / "fm" / "train-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    dest = tmp_path / "dest"
    with pytest.raises(
        DataError,
        match=r"train-labels-idx1-ubyte.gz is corrupt: md5 \w+, expected " + table["train-labels-idx1-ubyte.gz"],
    ):
        download_module.download_fashion_mnist(dest, base_url=url + "/fm")
    assert not (dest / "train-labels-idx1-ubyte.gz").exists()
    assert not list(dest.glob(".*part"))  # no half-finished temp file left behind


def test_download_server_errors(tmp_path, capsys, served_fashion_mnist):
    _, url, _ = served_fashion_mnist
    code, _, err = _run(
        capsys, "data", "download", "fashion-mnist", "--root", str(tmp_path / "d"), "--base-url", url + "/error"
    )
    assert code == 2 and "HTTP 500" in err
    code, _, err = _run(
        capsys, "data", "download", "fashion-mnist", "--root", str(tmp_path / "d"), "--base-url", url + "/missing"
    )
    assert code == 2 and "HTTP 404" in err and "/missing/t10k-images-idx3-ubyte.gz" in err
    assert not [p for p in (tmp_path / "d").iterdir()]


def test_download_dropped_connection_named(tmp_path, served_fashion_mnist):
    _, url, _ = served_fashion_mnist
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=r"ended after 5002 of 100000 bytes .*run the command again"):
        download_module.download_fashion_mnist(dest, base_url=url + "/short")
    assert not list(dest.iterdir())


def test_download_killed_midway_never_looks_complete(tmp_path, served_fashion_mnist):
    import os
    import signal
    import time

    _, url, table = served_fashion_mnist
    dest = tmp_path / "dest"
    dest.mkdir()
    name = "train-labels-idx1-ubyte.gz"
    script = (
        "import sys; from pathlib import Path; from asymcl.data.download import download_file; "
        "download_file(sys.argv[1], Path(sys.argv[2]), sys.argv[3])"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, f"{url}/stall/{name}", str(dest / name), table[name]])
    try:
        deadline = time.monotonic() + 60
        while not list(dest.glob(".*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let it receive the first 5 kB; the server then hangs
        assert proc.poll() is None, "the download should still be waiting for the rest"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no clean-up code runs
        proc.wait()
    parts = list(dest.iterdir())
    assert len(parts) == 1 and parts[0].name.startswith(f".{name}.") and parts[0].name.endswith(".part")
    # The next run fetches the file and removes a part file that no live download can own.
    old = time.time() - 3600
    os.utime(parts[0], (old, old))
    download_module.download_fashion_mnist(dest, base_url=url + "/fm")
    assert sorted(p.name for p in dest.iterdir()) == sorted(table)
    umask = os.umask(0)
    os.umask(umask)
    assert (dest / name).stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_download_table_matches_shared_readme():
    readme = SHARED / "README.md"
    if not readme.is_file():
        pytest.skip("../shared/datasets is not present")
    text = readme.read_text()
    for name, md5 in download_module.FASHION_MNIST_MD5.items():
        assert f"| {name} | {md5} |" in text


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets is not present")
def test_real_datasets_match_the_readme(capsys):
    code, out, _ = _run(
        capsys, "data", "summary", "--dataset", "fashion-mnist", "--root", str(SHARED / "fashion-mnist"), "--json"
    )
    fm = json.loads(out)["splits"]
    assert code == 0
    assert sum(fm["train"].values()) + sum(fm["val"].values()) == 60_000
    assert sum(fm["test"].values()) == 10_000
    expected_train = {"MEL": 491, "NV": 4323, "BCC": 264, "AKIEC": 183, "BKL": 583, "DF": 60, "VASC": 80}
    expected_test = {"MEL": 171, "NV": 909, "BCC": 93, "AKIEC": 43, "BKL": 217, "DF": 44, "VASC": 35}
    for argv in (
        ["--dataset", "isic2018", "--root", str(SHARED / "isic2018")],
        ["--dataset", "npz", "--root", str(SHARED / "isic2018_28px.npz")],
    ):
        code, out, _ = _run(capsys, "data", "summary", *argv, "--json")
        splits = json.loads(out)["splits"]
        assert code == 0
        assert {c: splits["train"][c] + splits["val"][c] for c in expected_train} == expected_train
        assert splits["test"] == expected_test


def test_summary_csv_column_names_from_the_command_line(tmp_path, capsys):
    from data_fixtures import write_image

    for i in range(8):
        write_image(tmp_path / f"{i}.png", i)
    rows = [f"{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(8)]
    (tmp_path / "list.csv").write_text("picture,kind\n" + "\n".join(rows) + "\n")
    base = ["data", "summary", "--dataset", "csv", "--root", str(tmp_path / "list.csv"), "--json"]
    code, out, err = _run(capsys, *base)
    assert code == 2 and out == ""
    assert "no image path column" in err and "--csv-path-column" in err and "picture,kind" in err
    code, out, err = _run(capsys, *base, "--csv-path-column", "picture", "--csv-label-column", "kind")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["classes"] == ["cat", "dog"]
    assert sum(sum(split.values()) for split in payload["splits"].values()) == 8


@pytest.mark.parametrize(
    "dataset,kind",
    [("fashion-mnist", "file"), ("isic2018", "file"), ("folder", "file"), ("npz", "dir"), ("csv", "dir")],
)
def test_summary_root_of_the_wrong_kind(tmp_path, capsys, dataset, kind):
    root = tmp_path / "root"
    root.mkdir() if kind == "dir" else root.write_text("x")
    code, out, err = _run(capsys, "data", "summary", "--dataset", dataset, "--root", str(root))
    expected = "is a folder, not a file" if kind == "dir" else "is a file, not a folder"
    assert code == 2 and out == "" and expected in err and str(root) in err


def test_summary_image_size_too_large_for_memory(capsys, monkeypatch):
    import asymcl.data.datasets as datasets_module

    # a fixed 8 GiB machine, so the test never tries a real 42 GiB allocation on a big one
    monkeypatch.setattr(datasets_module, "_physical_memory_bytes", lambda: 8 * 2**30)
    code, out, err = _run(capsys, "data", "summary", "--dataset", "digits", "--image-size", "5000")
    assert code == 2 and out == "" and "image_size 5000x5000 for 1797 images" in err and "smaller image_size" in err
