"""CIFAR-10 files: the official python-batch layout, read into tensors, and the md5-checked download.

No Lightning import; :class:`~featvis.data.CIFARDataModule` builds on these.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from pathlib import Path

import torch
from torch import Tensor

NUM_CLASSES = 10
IMAGE_SIZE = 32
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"


class CIFARFormatError(ValueError):
    """A CIFAR-10 batch file is truncated, corrupt or not in the official python-batch format."""


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            content = pickle.load(handle, encoding="latin1")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"CIFAR-10 batch file {path} is missing. Re-download the dataset (delete the folder "
            f"{path.parent} and run with download=True) or point data_dir at a complete copy."
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, zlib.error) as err:
        raise CIFARFormatError(
            f"CIFAR-10 batch file {path} is truncated or corrupt ({type(err).__name__}: {err}). "
            f"Replace it with an intact copy, or delete {path.parent} and download again."
        ) from err
    if not isinstance(content, dict):
        raise CIFARFormatError(
            f"CIFAR-10 batch file {path} holds a {type(content).__name__}, expected a dict."
        )
    return content


def read_batch(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read one official CIFAR-10 python batch.

    Args:
        path: a batch file such as ``data_batch_1`` or ``test_batch``.

    Returns:
        Images as a ``(N, 3, 32, 32)`` uint8 tensor and labels as a ``(N,)`` int64 tensor.

    Raises:
        CIFARFormatError: the file cannot be unpickled, lacks ``data``/``labels``, or has wrong shapes.
        ValueError: a label lies outside 0..9 (CIFARFormatError is a ValueError).
    """
    import numpy as np

    path = Path(path)
    content = _unpickle(path)
    if "data" not in content or "labels" not in content:
        raise CIFARFormatError(f"{path} lacks the 'data' and 'labels' entries of a CIFAR-10 batch.")
    data = np.asarray(content["data"])
    labels = np.asarray(content["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        raise CIFARFormatError(
            f"{path}: 'data' must be an (N, 3072) uint8 array (R, G, B planes of 32x32 images), "
            f"got {data.dtype} with shape {data.shape}."
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise CIFARFormatError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        bad = labels[(labels < 0) | (labels >= NUM_CLASSES)][0]
        raise CIFARFormatError(f"{path}: label {int(bad)} is outside 0..{NUM_CLASSES - 1}.")
    images = torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def read_split(folder: str | Path, train: bool) -> tuple[Tensor, Tensor]:
    """Read the training (5 batches) or test split of a ``cifar-10-batches-py`` folder into single tensors.

    Args:
        folder: the ``cifar-10-batches-py`` folder.
        train: the training split if True, else the test split.
    """
    names = TRAIN_BATCHES if train else (TEST_BATCH,)
    parts = [read_batch(Path(folder) / name) for name in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def read_class_names(folder: str | Path) -> list[str]:
    """Class names from ``batches.meta``, in label order."""
    path = Path(folder) / META_FILE
    meta = _unpickle(path)
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise CIFARFormatError(f"{path}: 'label_names' must list {NUM_CLASSES} class names, got {names!r}.")
    return [str(n) for n in names]


class CIFARDownloadError(OSError):
    """Downloading the CIFAR-10 archive failed (no network, refused connection, HTTP error, ...)."""


def _download_failure(err: BaseException) -> str:
    """Why a download failed, in a few words (urllib nests the useful part in ``reason``)."""
    import urllib.error

    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    text = " ".join(str(reason).split())
    if isinstance(reason, str):
        return text or type(err).__name__
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def download_cifar10(data_dir: str | Path, url: str | None = None, md5: str | None = None) -> Path:
    """Download the official CIFAR-10 python archive, verify its md5 and extract it into ``data_dir``.

    Nothing partial is left behind: the archive is downloaded into a hidden staging folder inside ``data_dir``
    and renamed into place only once its md5 matches, and ``cifar-10-batches-py`` is extracted there and renamed
    into place as a whole; on failure the staging folder is removed, and so are the folders this call created
    for ``data_dir`` while they are empty. An intact archive already in ``data_dir`` is extracted without downloading.

    Args:
        data_dir: destination folder; the archive and ``cifar-10-batches-py`` are written there.
        url: archive address (default: the official one).
        md5: expected md5 of the archive (default: the official one).

    Returns:
        The extracted ``cifar-10-batches-py`` folder.

    Raises:
        CIFARDownloadError: the download failed (offline, unreachable host, HTTP error); the message names the
            URL and how to use a local copy instead.
        CIFARFormatError: the downloaded archive does not match ``md5`` or holds no ``cifar-10-batches-py``.
    """
    import http.client
    import os
    import shutil
    import tempfile

    from torchvision.datasets.utils import check_integrity, download_url

    data_dir = Path(data_dir)
    url = url or CIFAR10_URL
    md5 = md5 or CIFAR10_MD5
    created = [path for path in (data_dir, *data_dir.parents) if not path.exists()]  # leaf first
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / CIFAR10_ARCHIVE
    folder = data_dir / CIFAR10_FOLDER
    staging = Path(tempfile.mkdtemp(prefix=".cifar-10-download-", dir=data_dir))
    try:
        if not check_integrity(str(archive), md5):
            partial = staging / CIFAR10_ARCHIVE
            try:
                download_url(url, str(staging), filename=CIFAR10_ARCHIVE)
            except (OSError, http.client.HTTPException, RecursionError, ValueError) as err:
                # urllib's own traceback runs to ~90 lines and never says what was being downloaded.
                raise CIFARDownloadError(
                    f"CIFAR-10 download from {url} failed ({_download_failure(err)}). To use a copy that is "
                    f"already on this machine, point --data.data_dir (data_dir) at the folder that contains "
                    f"{CIFAR10_FOLDER} and pass --data.download false, or put {CIFAR10_ARCHIVE} (md5 {md5}) "
                    f"into {data_dir} and run again."
                ) from None
            if not check_integrity(str(partial), md5):
                raise CIFARFormatError(
                    f"the archive downloaded from {url} does not match md5 {md5} (it was deleted); try again, "
                    f"or put an intact {CIFAR10_ARCHIVE} into {data_dir}."
                )
            os.replace(partial, archive)
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(CIFAR10_FOLDER + "/") and m.isfile()]
            if not members:
                raise CIFARFormatError(f"archive {archive} holds no {CIFAR10_FOLDER}/ folder.")
            # A missing folder appears whole; an existing one (a direct call) is updated in place, as before.
            tar.extractall(staging if not folder.exists() else data_dir, members=members, filter="data")
        if (staging / CIFAR10_FOLDER).is_dir():
            os.replace(staging / CIFAR10_FOLDER, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for path in created:  # the folders this call made, while empty (a verified archive stays)
            try:
                path.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return folder
