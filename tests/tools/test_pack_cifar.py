"""tools/device/pack_cifar.py: CIFAR-10 carried to a GPU machine must arrive byte-identical."""

import pickle

import numpy as np

from tools.device.pack_cifar import HALVES, pack, round_trip_changes, unpack


def test_pack_then_unpack_gives_the_same_batches(cifar_dir, tmp_path):
    source = cifar_dir / "cifar-10-batches-py"
    pack(source, tmp_path / "a", tmp_path / "b")
    assert round_trip_changes(source, tmp_path / "a", tmp_path / "b", tmp_path / "check") == []
    # and each half holds only its own batches, plus the class names
    assert sorted(p.name for p in (tmp_path / "a").glob("*.json")) == sorted(f"{n}.json" for n in HALVES[0])
    assert (tmp_path / "check" / "batches.meta").read_bytes() == (source / "batches.meta").read_bytes()


def test_a_changed_pixel_is_reported(cifar_dir, tmp_path):
    source = cifar_dir / "cifar-10-batches-py"
    pack(source, tmp_path / "a", tmp_path / "b")
    unpack(tmp_path / "b", tmp_path / "check")
    with open(source / "data_batch_4", "rb") as handle:
        content = pickle.load(handle, encoding="latin1")
    content["data"] = np.asarray(content["data"]).copy()
    content["data"][0, 0] ^= 1  # the source changes after packing: the check must see it
    with open(source / "data_batch_4", "wb") as handle:
        pickle.dump(content, handle)
    assert round_trip_changes(source, tmp_path / "a", tmp_path / "b", tmp_path / "check2") == ["data_batch_4"]
