"""CIFAR-10 python batches, download, bad input, augmentation and splits of ``featvis.data``."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import write_cifar_folder

import featvis.cifar as cifar_module
from featvis.cifar import CIFAR10_FOLDER, CIFARFormatError, read_batch, read_class_names, read_split
from featvis.data import CIFARDataModule, random_crop_flip

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time (ns)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _write_pickle(path: Path, content: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(content, handle)
    return path


# --- reading the official format -------------------------------------------------------------------------


def test_read_batch_decodes_rgb_planes_row_major(tmp_path: Path) -> None:
    count = 3
    red = np.arange(1024, dtype=np.int64).reshape(32, 32) % 256
    planes = np.empty((count, 3, 32, 32), dtype=np.uint8)
    for i in range(count):
        planes[i, 0] = (red + i) % 256
        planes[i, 1] = 255 - red
        planes[i, 2] = 10 * i + 7
    # The official layout: each row is the 1024 red values (row-major), then green, then blue.
    rows = np.concatenate([planes[:, c].reshape(count, 1024) for c in range(3)], axis=1)
    assert rows.shape == (count, 3072)
    path = _write_pickle(tmp_path / "data_batch_1", {"data": rows, "labels": [3, 0, 9], "batch_label": "b"})

    images, labels = read_batch(path)

    assert images.dtype == torch.uint8 and images.shape == (count, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.tolist() == [3, 0, 9]
    # Pixel (row 1, column 2) of image 2: red = (1 * 32 + 2 + 2) % 256, green = 255 - 34, blue = 27.
    assert images[2, :, 1, 2].tolist() == [36, 221, 27]
    # The last pixel of the red plane is value 1023 % 256 = 255 for image 0.
    assert images[0, :, 31, 31].tolist() == [255, 0, 7]
    assert torch.equal(images, torch.from_numpy(planes))


def test_read_class_names_and_split_order(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path, per_batch=4, seed=3)
    assert read_class_names(folder) == CLASS_NAMES
    train_images, train_labels = read_split(folder, train=True)
    test_images, test_labels = read_split(folder, train=False)
    assert train_images.shape == (20, 3, 32, 32) and train_labels.shape == (20,)
    assert test_images.shape == (4, 3, 32, 32) and test_labels.shape == (4,)
    # Training batches are concatenated in order data_batch_1 .. data_batch_5.
    for i in range(5):
        with open(folder / f"data_batch_{i + 1}", "rb") as handle:
            raw = pickle.load(handle)
        expected = torch.from_numpy(raw["data"].reshape(-1, 3, 32, 32))
        assert torch.equal(train_images[4 * i : 4 * i + 4], expected)
        assert train_labels[4 * i : 4 * i + 4].tolist() == raw["labels"]


# --- download ------------------------------------------------------------------------------------------------


def test_official_download_constants() -> None:
    assert cifar_module.CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert cifar_module.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar_module.CIFAR10_FOLDER == "cifar-10-batches-py"


@pytest.fixture
def archive_server(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A synthetic ``cifar-10-python.tar.gz`` served over HTTP on the loopback interface only."""
    source = write_cifar_folder(tmp_path / "source", per_batch=6, seed=5)
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=CIFAR10_FOLDER)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
        yield SimpleNamespace(url=url, md5=md5, source=source)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_prepare_data_downloads_verifies_and_extracts(
    tmp_path: Path, archive_server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cifar_module, "CIFAR10_URL", archive_server.url)
    monkeypatch.setattr(cifar_module, "CIFAR10_MD5", archive_server.md5)
    data_dir = tmp_path / "fresh"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("mine")
    datamodule = CIFARDataModule(data_dir=str(data_dir), download=True, batch_size=4)

    datamodule.prepare_data()

    folder = data_dir / CIFAR10_FOLDER
    assert folder.is_dir()
    assert (data_dir / "notes.txt").read_text() == "mine"
    assert hashlib.md5((data_dir / "cifar-10-python.tar.gz").read_bytes()).hexdigest() == archive_server.md5
    for name in ["batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))]:
        assert (folder / name).read_bytes() == (archive_server.source / name).read_bytes()
    datamodule.setup("fit")
    expected_train = read_split(archive_server.source, train=True)
    assert torch.equal(datamodule.split("train")[0], expected_train[0])
    assert torch.equal(datamodule.split("train")[1], expected_train[1])
    assert torch.equal(datamodule.split("test")[0], read_split(archive_server.source, train=False)[0])
    assert datamodule.classes == CLASS_NAMES


def test_setup_downloads_when_folder_missing(
    tmp_path: Path, archive_server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cifar_module, "CIFAR10_URL", archive_server.url)
    monkeypatch.setattr(cifar_module, "CIFAR10_MD5", archive_server.md5)
    datamodule = CIFARDataModule(data_dir=str(tmp_path / "new" / "dir"), download=True)
    datamodule.setup("fit")
    assert datamodule.split("test")[0].shape == (6, 3, 32, 32)


def test_download_with_wrong_md5_fails(
    tmp_path: Path, archive_server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cifar_module, "CIFAR10_URL", archive_server.url)
    monkeypatch.setattr(cifar_module, "CIFAR10_MD5", "0" * 32)
    datamodule = CIFARDataModule(data_dir=str(tmp_path / "dl"), download=True)
    with pytest.raises(CIFARFormatError, match="0{32}"):
        datamodule.prepare_data()
    # Nothing unverified is extracted, and the unverified archive is not left behind either (nor the folder that
    # the download created for it).
    assert not (tmp_path / "dl").exists()


OFFLINE_URL = (
    "http://127.0.0.1:9/cifar-10-python.tar.gz"  # the discard port, closed: refused at once, offline
)


def test_failed_download_is_one_error_naming_the_url_and_the_local_copy_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cifar_module, "CIFAR10_URL", OFFLINE_URL)
    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    datamodule = CIFARDataModule(data_dir=str(data_dir), download=True)
    with pytest.raises(OSError) as info:
        datamodule.prepare_data()
    assert isinstance(info.value, cifar_module.CIFARDownloadError)
    message = str(info.value)
    assert message.startswith(f"CIFAR-10 download from {OFFLINE_URL} failed (ConnectionRefusedError")
    assert "--data.data_dir" in message and "--data.download false" in message and CIFAR10_FOLDER in message
    assert "\n" not in message
    # One error: urllib's chain of exceptions (about 90 lines of traceback) is not attached.
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert list(data_dir.iterdir()) == []
    # A data_dir the download had to create is removed again, parents included.
    with pytest.raises(cifar_module.CIFARDownloadError):
        cifar_module.download_cifar10(tmp_path / "new" / "dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.fixture
def truncating_server() -> Iterator[str]:
    """An HTTP server on the loopback interface that promises 100 kB and closes after 1 kB."""

    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            with contextlib.suppress(OSError):  # the redirect check closes without reading the body
                self.wfile.write(b"\x1f\x8b" + bytes(1022))

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_interrupted_download_leaves_no_partial_archive(
    tmp_path: Path, truncating_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cifar_module, "CIFAR10_URL", truncating_server)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("mine")
    # urllib reads a connection closed early as a short file; the md5 check catches it.
    with pytest.raises(CIFARFormatError, match=f"downloaded from {truncating_server} does not match md5"):
        CIFARDataModule(data_dir=str(data_dir), download=True).prepare_data()
    # The 1 kB received went to a staging file that is gone: nothing named like the archive looks complete.
    assert [p.name for p in data_dir.iterdir()] == ["notes.txt"]


# --- bad input ---------------------------------------------------------------------------------------------


def test_missing_folder_without_download_names_path_and_fixes(tmp_path: Path) -> None:
    data_dir = tmp_path / "nowhere"
    datamodule = CIFARDataModule(data_dir=str(data_dir), download=False)
    for call in (datamodule.prepare_data, datamodule.setup):
        with pytest.raises(FileNotFoundError) as info:
            call()
        message = str(info.value)
        assert str(data_dir / CIFAR10_FOLDER) in message
        assert "download=True" in message and "--data.download" in message
        assert "data_dir" in message and "--data.data_dir" in message
    assert not data_dir.exists()


def test_truncated_batch_names_the_file(cifar_dir: Path) -> None:
    path = cifar_dir / CIFAR10_FOLDER / "data_batch_3"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(CIFARFormatError, match="data_batch_3") as info:
        read_batch(path)
    assert "truncated or corrupt" in str(info.value)
    with pytest.raises(CIFARFormatError, match="data_batch_3"):
        CIFARDataModule(data_dir=str(cifar_dir), download=False).setup("fit")


@pytest.mark.parametrize(
    "garbage",
    [b"", b"not a pickle at all", bytes(range(256)) * 4, pickle.dumps([1, 2, 3])],
    ids=["empty", "text", "binary", "list"],
)
def test_corrupt_batch_names_the_file(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(garbage)
    with pytest.raises(CIFARFormatError, match=str(path)):
        read_batch(path)


def test_missing_batch_file_names_the_file(cifar_dir: Path) -> None:
    (cifar_dir / CIFAR10_FOLDER / "data_batch_5").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_5"):
        CIFARDataModule(data_dir=str(cifar_dir), download=False).setup("fit")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ({"data": np.zeros((2, 3071), np.uint8), "labels": [0, 1]}, "3072"),
        ({"data": np.zeros((2, 3, 32, 32), np.uint8), "labels": [0, 1]}, "3072"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "uint8"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "labels"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "label 10"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [-1, 0]}, "label -1"),
        ({"data": np.zeros((2, 3072), np.uint8)}, "labels"),
    ],
    ids=["short-rows", "4d", "float", "label-count", "label-10", "label-negative", "no-labels"],
)
def test_wrong_shapes_or_labels_raise_value_error(tmp_path: Path, content: dict, pattern: str) -> None:
    path = _write_pickle(tmp_path / "data_batch_1", content)
    with pytest.raises(ValueError, match=pattern):
        read_batch(path)


def test_bad_meta_raises_value_error(tmp_path: Path) -> None:
    _write_pickle(tmp_path / "batches.meta", {"label_names": CLASS_NAMES[:9]})
    with pytest.raises(ValueError, match="batches.meta"):
        read_class_names(tmp_path)


def test_bad_datamodule_arguments_raise_value_error(cifar_dir: Path) -> None:
    for kwargs in ({"batch_size": 0}, {"eval_batch_size": -1}, {"val_size": -5}, {"crop_padding": -1}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            CIFARDataModule(data_dir=str(cifar_dir), **kwargs)
    with pytest.raises(ValueError, match="val_size"):
        CIFARDataModule(data_dir=str(cifar_dir), val_size=100).setup("fit")
    with pytest.raises(ValueError, match="split"):
        CIFARDataModule(data_dir=str(cifar_dir)).split("holdout")


def test_user_data_dir_is_never_modified(cifar_dir: Path) -> None:
    (cifar_dir / "my_notes.txt").write_text("do not touch")
    (cifar_dir / CIFAR10_FOLDER / "readme.user").write_bytes(b"\x00\x01user")
    before = _snapshot(cifar_dir)

    datamodule = CIFARDataModule(data_dir=str(cifar_dir), download=True, batch_size=8)
    datamodule.prepare_data()
    datamodule.setup("fit")
    next(iter(datamodule.train_dataloader()))
    assert _snapshot(cifar_dir) == before

    # A failed load (corrupt batch) must not delete, replace or re-download anything either.
    bad = cifar_dir / CIFAR10_FOLDER / "test_batch"
    bad.write_bytes(b"garbage")
    before = _snapshot(cifar_dir)
    with pytest.raises(CIFARFormatError, match="test_batch"):
        CIFARDataModule(data_dir=str(cifar_dir), download=True).setup("fit")
    assert _snapshot(cifar_dir) == before


# --- augmentation ------------------------------------------------------------------------------------------


def _find_window(output: torch.Tensor, padded: torch.Tensor, padding: int) -> list[tuple[int, int, bool]]:
    """All (dy, dx, flipped) such that ``output`` is that window of ``padded``, possibly mirrored."""
    height, width = output.shape[-2:]
    matches = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            window = padded[:, dy : dy + height, dx : dx + width]
            for flipped in (False, True):
                if torch.equal(output, window.flip(-1) if flipped else window):
                    matches.append((dy, dx, flipped))
    return matches


def test_random_crop_flip_outputs_windows_of_reflect_padded_images() -> None:
    count, padding = 64, 4
    # Every pixel value is unique, so a window of the padded image identifies its offset.
    images = torch.arange(count * 3 * 32 * 32, dtype=torch.float32).view(count, 3, 32, 32)
    out = random_crop_flip(images, padding, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = torch.nn.functional.pad(images, (padding,) * 4, mode="reflect")
    draws = []
    for i in range(count):
        matches = _find_window(out[i], padded[i], padding)
        assert len(matches) == 1, f"image {i} is not a single crop of its padded input: {matches}"
        draws.append(matches[0])
    # Draws are per image: several different offsets and both flip states occur.
    assert len({(dy, dx) for dy, dx, _ in draws}) >= 10
    assert {flipped for *_, flipped in draws} == {False, True}
    assert len({dy for dy, _, _ in draws}) >= 4 and len({dx for _, dx, _ in draws}) >= 4
    assert all(0 <= dy <= 2 * padding and 0 <= dx <= 2 * padding for dy, dx, _ in draws)


def test_random_crop_flip_is_reproducible_with_a_generator() -> None:
    images = torch.rand(16, 3, 32, 32)
    first = random_crop_flip(images, 4, True, generator=torch.Generator().manual_seed(7))
    again = random_crop_flip(images, 4, True, generator=torch.Generator().manual_seed(7))
    other = random_crop_flip(images, 4, True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_random_crop_flip_disabled_is_identity_and_flip_only_mirrors() -> None:
    images = torch.rand(8, 3, 32, 32)
    assert torch.equal(random_crop_flip(images, 0, False), images)
    mirrored = random_crop_flip(images, 0, True, generator=torch.Generator().manual_seed(1))
    for original, out in zip(images, mirrored, strict=True):
        assert torch.equal(out, original) or torch.equal(out, original.flip(-1))
    assert not torch.equal(mirrored, images)


def test_training_batches_are_augmented_eval_batches_are_not(cifar_dir: Path) -> None:
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=16, eval_batch_size=16)
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.val_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 3, 32, 32)
    expected = datamodule.colour.to_model(images.float() / 255)

    datamodule.trainer = SimpleNamespace(training=False)
    eval_images, eval_labels = datamodule.on_after_batch_transfer((images.clone(), labels), 0)
    assert torch.allclose(eval_images, expected, atol=1e-5)
    assert torch.equal(eval_labels, labels)
    assert eval_images.is_contiguous(memory_format=torch.channels_last)

    datamodule.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    train_images, _ = datamodule.on_after_batch_transfer((images.clone(), labels), 0)
    assert train_images.shape == expected.shape
    assert not torch.allclose(train_images, expected, atol=1e-3)
    # Undo the colour map: each augmented image is a crop/flip of the reflect-padded original.
    rgb = datamodule.to_rgb(train_images) * 255
    padded = torch.nn.functional.pad(images.float(), (4,) * 4, mode="reflect")
    for i in range(images.shape[0]):
        assert _find_window(rgb[i].round(), padded[i], 4), f"image {i} is not a crop of its input"


# --- splits ------------------------------------------------------------------------------------------------


def test_each_batch_file_is_read_once(cifar_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    original = cifar_module.read_batch

    def counting_read_batch(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
        reads.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(cifar_module, "read_batch", counting_read_batch)
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=10, eval_batch_size=10)
    datamodule.setup("fit")
    for _ in range(2):
        for loader in (
            datamodule.train_dataloader(),
            datamodule.val_dataloader(),
            datamodule.test_dataloader(),
        ):
            for images, *_ in loader:
                assert images.dtype == torch.uint8
    datamodule.setup("test")
    datamodule.split("train")
    assert sorted(reads) == sorted(["test_batch", *(f"data_batch_{i}" for i in range(1, 6))])
    # One training epoch visits every in-memory training image once, with its own label, in shuffled order.
    images, labels = datamodule.split("train")
    rows = {img.numpy().tobytes(): int(y) for img, y in zip(images, labels, strict=True)}
    seen = [
        (img.numpy().tobytes(), int(y))
        for batch_images, batch_labels, _ in datamodule.train_dataloader()
        for img, y in zip(batch_images, batch_labels, strict=True)
    ]
    assert len(seen) == 100 and {k for k, _ in seen} == set(rows)
    assert all(rows[k] == y for k, y in seen)
    assert [k for k, _ in seen] != [img.numpy().tobytes() for img in images]


def test_validation_defaults_to_the_test_split(cifar_dir: Path) -> None:
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=8, eval_batch_size=7)
    datamodule.setup("fit")
    assert datamodule.val_is_test
    test_images, test_labels = read_split(cifar_dir / CIFAR10_FOLDER, train=False)
    train_images, _ = read_split(cifar_dir / CIFAR10_FOLDER, train=True)
    for name in ("val", "test"):
        assert torch.equal(datamodule.split(name)[0], test_images)
        assert torch.equal(datamodule.split(name)[1], test_labels)
    assert torch.equal(datamodule.split("train")[0], train_images)
    assert datamodule.split("train")[0].dtype == torch.uint8
    # Eval loaders keep every image in order (no drop_last); the train loader drops the ragged batch.
    val_batches = list(datamodule.val_dataloader())
    assert [b[0].shape[0] for b in val_batches] == [7, 7, 6]
    assert torch.equal(torch.cat([b[0] for b in val_batches]), test_images)
    assert torch.equal(torch.cat([b[0] for b in datamodule.test_dataloader()]), test_images)
    train_batches = list(datamodule.train_dataloader())
    assert len(train_batches) == 100 // 8 and all(b[0].shape[0] == 8 for b in train_batches)


def test_val_size_holds_out_disjoint_training_images(cifar_dir: Path) -> None:
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), val_size=30, seed=1)
    datamodule.setup("fit")
    assert not datamodule.val_is_test  # a validation score is not a test score here
    all_images, all_labels = read_split(cifar_dir / CIFAR10_FOLDER, train=True)
    train_images, train_labels = datamodule.split("train")
    val_images, val_labels = datamodule.split("val")
    assert train_images.shape[0] == 70 and val_images.shape[0] == 30
    assert train_labels.shape[0] == 70 and val_labels.shape[0] == 30
    key = {img.numpy().tobytes(): int(y) for img, y in zip(all_images, all_labels, strict=True)}
    assert len(key) == 100  # noise makes every synthetic image unique
    train_keys = [img.numpy().tobytes() for img in train_images]
    val_keys = [img.numpy().tobytes() for img in val_images]
    assert set(train_keys).isdisjoint(val_keys)
    assert set(train_keys) | set(val_keys) == set(key)
    assert [key[k] for k in val_keys] == val_labels.tolist()
    # The test split is still the test batch, and the held-out set depends only on the seed.
    assert torch.equal(datamodule.split("test")[0], read_split(cifar_dir / CIFAR10_FOLDER, train=False)[0])
    again = CIFARDataModule(data_dir=str(cifar_dir), val_size=30, seed=1)
    assert torch.equal(again.split("val")[0], val_images)


# --- real data ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_cifar10_shapes_and_sizes(real_cifar_dir: Path) -> None:
    datamodule = CIFARDataModule(data_dir=str(real_cifar_dir), download=False)
    datamodule.setup("fit")
    train_images, train_labels = datamodule.split("train")
    test_images, test_labels = datamodule.split("test")
    assert train_images.shape == (50000, 3, 32, 32) and train_images.dtype == torch.uint8
    assert test_images.shape == (10000, 3, 32, 32) and test_images.dtype == torch.uint8
    assert train_labels.shape == (50000,) and test_labels.shape == (10000,)
    assert torch.bincount(test_labels, minlength=10).tolist() == [1000] * 10
    assert torch.bincount(train_labels, minlength=10).tolist() == [5000] * 10
    assert datamodule.classes == CLASS_NAMES
    assert torch.equal(datamodule.split("val")[0], test_images)
    # Real photos use the full range and are not constant.
    assert int(train_images.min()) == 0 and int(train_images.max()) == 255


def test_alternating_flip_mirrors_each_image_in_every_other_epoch(cifar_dir: Path) -> None:
    datamodule = CIFARDataModule(data_dir=str(cifar_dir), batch_size=10, flip="alternating", crop_padding=0)
    datamodule.setup("fit")
    images, labels, indices = next(iter(datamodule.train_dataloader()))
    assert torch.equal(datamodule.split("train")[0][indices], images)  # indices name the batch's images
    states = []
    for epoch in range(4):
        datamodule.trainer = SimpleNamespace(training=True, current_epoch=epoch)
        out, _ = datamodule.on_after_batch_transfer((images.clone(), labels, indices), 0)
        rgb = (datamodule.to_rgb(out) * 255).round()
        flipped = [bool(torch.equal(rgb[i], images[i].float().flip(-1))) for i in range(len(indices))]
        assert all(f or torch.equal(rgb[i], images[i].float()) for i, f in enumerate(flipped))
        states.append(torch.tensor(flipped))
    # Even epochs repeat one state, odd epochs its complement; both states occur within an epoch.
    assert torch.equal(states[0], states[2]) and torch.equal(states[1], states[3])
    assert torch.equal(states[1], ~states[0])
    assert 0 < int(states[0].sum()) < len(indices)
    mask = datamodule.flip_mask(torch.arange(100), 0)
    assert 30 <= int(mask.sum()) <= 70
    assert CIFARDataModule(data_dir=str(cifar_dir), flip="random").flip_mask(torch.arange(3), 1) is True
    assert CIFARDataModule(data_dir=str(cifar_dir), flip="none").flip_mask(torch.arange(3), 1) is False
    with pytest.raises(ValueError, match="flip must be"):
        CIFARDataModule(data_dir=str(cifar_dir), flip=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"flip mask must be a bool tensor of shape \(2,\)"):
        random_crop_flip(images[:2].float(), 0, torch.ones(3, dtype=torch.bool))
