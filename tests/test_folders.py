"""featvis.folders: which output folders featvis may write or replace, and writing one as a whole."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from featvis.folders import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    FolderError,
    check_destination,
    read_manifest,
    write_folder,
)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry below ``root``: file bytes, or None for a folder."""
    return {
        p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def _write_two(folder: Path) -> None:
    (folder / "cat").mkdir()
    (folder / "cat" / "0.png").write_bytes(b"png-0")
    (folder / "grid.png").write_bytes(b"grid")


def _refused(out: Path, overwrite: bool, *fragments: str, protect=()) -> str:
    with pytest.raises(FolderError) as info:
        check_destination(out, overwrite, protect=protect)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_missing_or_empty_destination_is_accepted_and_nothing_is_created(tmp_path) -> None:
    check_destination(tmp_path / "new" / "deeper" / "out", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_destination(tmp_path / "empty", overwrite=False)
    check_destination(tmp_path / "empty", overwrite=True)
    assert _snapshot(tmp_path) == {"empty": None}


def test_file_and_non_empty_folder_are_refused(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("mine")
    for overwrite in (False, True):
        _refused(tmp_path / "a.txt", overwrite, str(tmp_path / "a.txt"), "is a file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    _refused(tmp_path / "full", False, str(tmp_path / "full"), "pass --overwrite")
    _refused(tmp_path / "full", True, "not written by featvis", MANIFEST_NAME)
    assert _snapshot(tmp_path) == {"a.txt": b"mine", "full": None, "full/x": b"x"}


def test_current_directory_and_its_ancestors_are_refused(tmp_path, monkeypatch) -> None:
    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    (work / "mine.txt").write_bytes(b"user data")
    monkeypatch.chdir(work)
    for out in (".", "..", str(tmp_path), "/"):
        for overwrite in (False, True):
            message = _refused(Path(out), overwrite, "current directory or one of its ancestors")
            assert message.startswith(f"output folder {out} ")
    assert _snapshot(tmp_path) == {"work": None, "work/sub": None, "work/sub/mine.txt": b"user data"}


def test_folder_holding_a_protected_path_is_refused_at_any_depth(tmp_path) -> None:
    out = tmp_path / "run"
    write_folder(out, _write_two, overwrite=False)
    ckpt = out / "cat" / "last.ckpt"
    ckpt.write_bytes(b"weights")
    _refused(out, True, str(ckpt), "must not delete", protect=[ckpt])
    _refused(out, True, protect=[out])
    check_destination(tmp_path / "other", True, protect=[ckpt])


def test_overwrite_accepts_only_entries_listed_in_the_manifest(tmp_path) -> None:
    out = tmp_path / "out"
    write_folder(out, _write_two, overwrite=False)
    check_destination(out, overwrite=True)
    (out / "cat" / "notes.txt").write_text("mine")
    _refused(out, True, "holds cat/notes.txt", "did not write")
    (out / "cat" / "notes.txt").unlink()
    (out / "extra").mkdir()
    _refused(out, True, "holds extra")
    (out / "extra").rmdir()
    (out / "link").symlink_to(tmp_path)
    _refused(out, True, "holds link")
    (out / "link").unlink()
    (out / "grid.png").unlink()  # a listed file the user deleted is fine
    check_destination(out, overwrite=True)


@pytest.mark.parametrize(
    "manifest",
    [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"format": MANIFEST_FORMAT + 1, "files": ["a"]}),
        json.dumps({"format": MANIFEST_FORMAT, "files": ["../escape"]}),
        json.dumps({"format": MANIFEST_FORMAT, "files": ["/abs"]}),
        json.dumps({"format": MANIFEST_FORMAT, "files": "a"}),
    ],
)
def test_invalid_manifest_is_not_trusted(tmp_path, manifest) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text(manifest)
    (out / "a").write_text("a")
    assert read_manifest(out) is None
    _refused(out, True, "not written by featvis")


def test_read_manifest_adds_the_parents_of_listed_files(tmp_path) -> None:
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": MANIFEST_FORMAT, "files": ["a/b/c.png"]}))
    assert read_manifest(tmp_path) == (frozenset({"a/b/c.png"}), frozenset({"a", "a/b"}))
    assert read_manifest(tmp_path / "missing") is None


def test_symlinked_destination_is_refused(tmp_path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert "symbolic link" in _refused(tmp_path / "link", True)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real").is_dir()


def test_unwritable_parents_are_refused_without_leaving_folders(tmp_path) -> None:
    (tmp_path / "afile").write_text("mine")
    _refused(tmp_path / "afile" / "sub" / "out", False, str(tmp_path / "afile"), "is a file")
    if Path("/proc/self").is_dir():
        _refused(Path("/proc/featvis-out"), False, "cannot create output folder /proc/featvis-out")
        _refused(Path("/proc/new/featvis-out"), False, "/proc")
    assert _snapshot(tmp_path) == {"afile": b"mine"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_parent_is_refused(tmp_path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert "not writable" in _refused(parent / "out", False)
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_write_folder_writes_a_manifest_of_exactly_the_written_files(tmp_path) -> None:
    out = tmp_path / "new" / "out"
    write_folder(out, _write_two, overwrite=False)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["format"] == MANIFEST_FORMAT
    assert manifest["files"] == ["cat/0.png", "grid.png"]
    assert manifest["folders"] == ["cat"]
    assert _snapshot(out) == {
        MANIFEST_NAME: (out / MANIFEST_NAME).read_bytes(),
        "cat": None,
        "cat/0.png": b"png-0",
        "grid.png": b"grid",
    }
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging folder left


def test_write_folder_follows_the_umask(tmp_path, umask_022) -> None:
    write_folder(tmp_path / "out", _write_two, overwrite=False)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "cat").stat().st_mode) == 0o755
    os.umask(0o027)
    write_folder(tmp_path / "out", _write_two, overwrite=True)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750


def test_overwrite_replaces_a_featvis_folder_and_only_its_files(tmp_path) -> None:
    out = tmp_path / "out"
    write_folder(out, _write_two, overwrite=False)
    with pytest.raises(FolderError, match="pass --overwrite"):
        write_folder(out, _write_two, overwrite=False)

    def write_dog(folder: Path) -> None:
        (folder / "dog").mkdir()
        (folder / "dog" / "0.png").write_bytes(b"dog")

    write_folder(out, write_dog, overwrite=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        MANIFEST_NAME,
        "dog",
        "dog/0.png",
    ]
    assert json.loads((out / MANIFEST_NAME).read_text())["files"] == ["dog/0.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old folder is gone, not set aside


def test_failed_write_leaves_nothing_behind(tmp_path) -> None:
    def broken(folder: Path) -> None:
        (folder / "half.png").write_bytes(b"half")
        raise RuntimeError("render crashed")

    with pytest.raises(RuntimeError, match="render crashed"):
        write_folder(tmp_path / "a" / "b" / "out", broken, overwrite=False)
    assert list(tmp_path.iterdir()) == []  # neither staging folder nor the parents it created
    write_folder(tmp_path / "out", _write_two, overwrite=False)
    before = _snapshot(tmp_path)
    with pytest.raises(RuntimeError):
        write_folder(tmp_path / "out", broken, overwrite=True)
    assert _snapshot(tmp_path) == before  # the previous folder is untouched


def test_write_may_not_create_the_manifest(tmp_path) -> None:
    with pytest.raises(ValueError, match="reserves"):
        write_folder(tmp_path / "out", lambda folder: (folder / MANIFEST_NAME).write_text("{}"), False)
    assert list(tmp_path.iterdir()) == []


def test_folder_changed_while_writing_is_not_replaced(tmp_path) -> None:
    out = tmp_path / "out"
    write_folder(out, _write_two, overwrite=False)

    def write_while_user_adds_a_file(folder: Path) -> None:
        _write_two(folder)
        (out / "mine.txt").write_text("user data")  # arrives after the first check

    before_user_file = _snapshot(out)
    with pytest.raises(FolderError, match="holds mine.txt"):
        write_folder(out, write_while_user_adds_a_file, overwrite=True)
    after = _snapshot(out)
    assert after.pop("mine.txt") == b"user data"
    assert after == before_user_file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_siblings_of_the_same_folder_are_removed(tmp_path) -> None:
    stale = tmp_path / ".out.partial-abc123"
    stale.mkdir()
    (stale / "half.png").write_bytes(b"half")
    dead = tmp_path / f".out.partial-{2**40}-dead"  # no such process
    dead.mkdir()
    alive = tmp_path / f".out.partial-{os.getpid()}-live"  # still being written by a running process
    alive.mkdir()
    other = tmp_path / ".out2.partial-abc123"  # another output folder's
    other.mkdir()
    old = tmp_path / ".out.old-abc123"  # a replaced featvis folder, left by a run killed mid-swap
    write_folder(old, _write_two, overwrite=False)
    (old / "mine.txt").write_text("user data")
    with pytest.warns(UserWarning, match="holds entries that featvis did not write"):
        write_folder(tmp_path / "out", _write_two, overwrite=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["out", alive.name, other.name, old.name])
    # Only the files featvis listed went; the user's file is still there.
    assert _snapshot(old) == {"mine.txt": b"user data"}
