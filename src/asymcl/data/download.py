"""Optional downloads (only when the user asks): Fashion-MNIST from its official location.

Each file is streamed into a temporary file beside its destination, its md5 checked, and only
then renamed into place with ``os.replace``: a file under its final name is always complete and
verified. A file already present with the right md5 is not downloaded again.
"""

from __future__ import annotations

import hashlib
import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path

from asymcl.atomic import atomic_open
from asymcl.errors import DataError

# The official location named in the Fashion-MNIST repository (zalandoresearch/fashion-mnist).
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# md5 of the official files (identical to the byte-exact copies in ../shared/datasets).
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

_CHUNK = 1 << 16


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_stale_parts(destination: Path, older_than_s: float) -> None:
    """Delete temp files of earlier runs that were killed (SIGKILL skips their clean-up).

    A live download writes at least once per network timeout, so a part file untouched for
    longer than ``older_than_s`` belongs to a dead process; newer ones may be a concurrent run.
    """
    now = time.time()
    for part in destination.parent.glob(f".{destination.name}.*.part"):
        try:
            if now - part.stat().st_mtime > older_than_s:
                part.unlink()
        except OSError:
            pass  # gone already, or not ours to delete: harmless


def download_file(url: str, destination: Path, md5: str, timeout: float = 60.0) -> None:
    """Fetch ``url`` to ``destination`` atomically, checking ``md5``; DataError on any failure."""
    _remove_stale_parts(destination, older_than_s=max(600.0, 2 * timeout))
    digest = hashlib.md5()
    received, expected_size = 0, None
    with atomic_open(destination, "wb", suffix=".part") as out:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                expected_size = int(length) if length and length.isdigit() else None
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
        except urllib.error.HTTPError as exc:
            raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or repr(exc)
            raise DataError(f"download of {url} failed: {reason}; nothing was written, run the command again") from None
        if expected_size is not None and received != expected_size:
            raise DataError(
                f"download of {url} ended after {received} of {expected_size} bytes (the connection "
                "dropped); nothing was written, run the command again"
            )
        got = digest.hexdigest()
        if got != md5:
            raise DataError(
                f"download of {url} is corrupt: md5 {got}, expected {md5}; nothing was written, "
                "run the command again (or use another --base-url)"
            )


def download_fashion_mnist(
    root: str | Path,
    base_url: str | None = None,
    checksums: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> list[tuple[str, str]]:
    """Download the four Fashion-MNIST files into ``root``; returns (file, status) pairs.

    status is ``"present"`` (already there and verified) or ``"downloaded"``.
    """
    root = Path(root)
    checksums = dict(FASHION_MNIST_MD5 if checksums is None else checksums)
    base = (base_url or FASHION_MNIST_URL).rstrip("/") + "/"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create download folder {root}: {exc.strerror}") from None
    results = []
    for name, md5 in checksums.items():
        destination = root / name
        if destination.is_file() and file_md5(destination) == md5:
            results.append((name, "present"))
            continue
        download_file(base + name, destination, md5, timeout=timeout)
        results.append((name, "downloaded"))
    return results
