"""Folders that featvis owns: write an output folder as a whole, and replace only what featvis wrote.

Every folder written by :func:`write_folder` holds a manifest, :data:`MANIFEST_NAME`, that lists the files and
folders featvis put there. ``--overwrite`` replaces a folder only when every entry in it is listed, so a mistyped
``--out`` (the current directory, a home folder, the folder holding the checkpoint) is refused instead of
emptied. The folder is built in a hidden sibling and renamed into place, so an interrupted run never leaves a
folder that looks complete.

Pure Python and the standard library, no Lightning import (``write_folder`` borrows
:func:`featvis.images.fsync_tree`, imported when it runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

MANIFEST_NAME = ".featvis-manifest.json"
"""File name of the manifest written into the top of every folder that featvis writes as a whole."""

MANIFEST_FORMAT = 1
"""Version of the manifest's layout; a manifest of another version is not trusted."""

_PARTIAL = "partial"  # staging folder being written: .<name>.partial-<pid>-<token>
_OLD = "old"  # previous folder moved aside while it is being replaced: .<name>.old-<pid>-<token>


class FolderError(ValueError):
    """An output folder that featvis must not write or replace; the message is one line naming path and fix."""


def read_manifest(folder: str | Path) -> tuple[frozenset[str], frozenset[str]] | None:
    """The files and folders that featvis wrote into ``folder``, from its manifest.

    Args:
        folder: a folder that may hold a manifest.

    Returns:
        ``(files, folders)`` as relative POSIX paths, or None when the manifest is missing, unreadable, of another
        format version, or lists a path that is absolute or leaves the folder.
    """
    path = Path(folder) / MANIFEST_NAME
    try:
        if path.is_symlink() or not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    files, folders = data.get("files"), data.get("folders", [])
    if not isinstance(files, list) or not isinstance(folders, list):
        return None
    if not all(_is_inner_path(item) for item in files + folders):
        return None
    # A folder that holds a listed file was created by featvis too, even if a manifest omits it.
    parents = {str(parent) for item in files for parent in PurePosixPath(item).parents if str(parent) != "."}
    return frozenset(files), frozenset(folders) | parents


def check_destination(out: str | Path, overwrite: bool, protect: Sequence[str | Path] = ()) -> None:
    """Refuse an output folder that featvis cannot write, or whose replacement could delete other files.

    Nothing is created or changed, except a short-lived probe entry in the nearest existing ancestor of ``out``
    to prove that it is writable.

    Args:
        out: the folder to write.
        overwrite: whether an existing, non-empty ``out`` may be replaced; even then only a folder written by
            featvis (every entry listed in its manifest) is replaced.
        protect: paths that must survive, such as the checkpoint being rendered; ``out`` must not contain any.

    Raises:
        FolderError: one line naming the path and how to fix it.
    """
    target = Path(os.path.abspath(out))
    if os.path.lexists(target):
        _check_existing(out, target, overwrite, protect)
    _check_parent_writable(out, target)


def write_folder(
    out: str | Path,
    write: Callable[[Path], None],
    overwrite: bool,
    protect: Sequence[str | Path] = (),
) -> None:
    """Write a folder as a whole: ``write`` fills a hidden staging sibling, which is then renamed to ``out``.

    The staging folder gets a manifest of every file ``write`` created and is flushed to disk before the rename.
    An existing ``out`` is replaced only under ``overwrite`` and only if featvis wrote it (checked again just
    before the swap); the old folder is moved aside and only its manifest-listed entries are deleted. Staging and
    moved-aside folders left by earlier, killed runs for the same ``out`` are removed first.

    Args:
        out: the folder to write.
        write: called with the (empty) staging folder; everything it writes there becomes ``out``.
        overwrite: whether an existing, non-empty ``out`` that featvis wrote may be replaced.
        protect: paths that must survive (see :func:`check_destination`).

    Raises:
        FolderError: ``out`` may not be written or replaced; nothing was changed.
        ValueError: ``write`` created a file named :data:`MANIFEST_NAME`.
    """
    # Imported here so that checking a destination stays free of torch, which featvis.images imports.
    from featvis.images import fsync_tree

    check_destination(out, overwrite, protect)
    target = Path(os.path.abspath(out))
    remove_stale_siblings(target)
    created: list[Path] = []
    staging: Path | None = None
    placed = False
    try:
        _make_parents(target.parent, created)
        staging = _make_unique_dir(target, _PARTIAL)
        write(staging)
        files, folders = _list_tree(staging)
        if MANIFEST_NAME in files:
            raise ValueError(
                f"write() created {MANIFEST_NAME}, a name that featvis reserves for its manifest."
            )
        manifest = {"format": MANIFEST_FORMAT, "written_by": "featvis", "files": files, "folders": folders}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        fsync_tree(staging)
        placed = _swap_into_place(out, target, staging, overwrite, protect)
        _fsync_dir(target.parent)
    finally:
        if not placed:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            # Parents created for this run only would be empty leftovers of a failed write.
            for folder in reversed(created):
                try:
                    folder.rmdir()
                except OSError:
                    break


def _check_existing(out: str | Path, target: Path, overwrite: bool, protect: Sequence[str | Path]) -> None:
    if target.is_symlink():
        # Replacing a link would either swap the link or write through it; neither is what a user expects.
        raise FolderError(
            f"output folder {out} is a symbolic link; pass the folder it points to or a new path."
        )
    if not target.is_dir():
        raise FolderError(f"output folder {out} is a file, not a folder; choose a folder path.")
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise FolderError(
            f"output folder {out} is the current directory or one of its ancestors; "
            f"choose a new folder inside it, e.g. {Path(out) / 'renders'}."
        )
    for path in protect:
        kept = Path(path).resolve()
        if kept == resolved or resolved in kept.parents:
            raise FolderError(
                f"output folder {out} contains {path}, which featvis must not delete; choose another folder."
            )
    try:
        empty = not any(target.iterdir())
    except OSError as err:
        raise FolderError(
            f"cannot read output folder {out} ({err.strerror}); choose another folder."
        ) from err
    if empty:
        return
    if not overwrite:
        raise FolderError(
            f"output folder {out} exists and is not empty; choose a new folder or pass --overwrite."
        )
    _check_owned(out, target)


def _check_owned(out: str | Path, target: Path) -> None:
    """Refuse to replace ``target`` unless every entry in it is listed in its manifest and can be deleted."""
    listed = read_manifest(target)
    if listed is None:
        raise FolderError(
            f"output folder {out} was not written by featvis (no valid {MANIFEST_NAME}), so --overwrite will not "
            "replace it; choose a new folder or empty it yourself."
        )
    files, folders = listed
    for relative, is_dir in _walk(target):
        if relative == MANIFEST_NAME or (relative in folders if is_dir else relative in files):
            continue
        raise FolderError(
            f"output folder {out} holds {relative}, which featvis did not write, so --overwrite will not replace "
            "it; move that entry out or choose a new folder."
        )
    for relative, is_dir in [(".", True), *_walk(target)]:
        # Deleting the old entries needs write access to every folder that holds them.
        if is_dir and not os.access(target / relative, os.W_OK | os.X_OK):
            raise FolderError(
                f"cannot replace output folder {out}: {target / relative} is not writable; fix its permissions "
                "or choose a new folder."
            )


def _check_parent_writable(out: str | Path, target: Path) -> None:
    """Prove that ``target`` can be created or renamed: its nearest existing ancestor must accept a new entry."""
    if target.parent == target:
        raise FolderError(f"output folder {out} is a filesystem root; choose a folder inside it.")
    ancestor = target.parent
    while not os.path.lexists(ancestor) and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FolderError(
            f"cannot create output folder {out}: {ancestor} is a file, not a folder; choose another path."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise FolderError(
            f"cannot create output folder {out}: {ancestor} is not writable; choose another path."
        )
    # access() trusts permission bits; read-only mounts, /proc and ACLs only show when something is created.
    probe = ancestor / f".{target.name}.probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError as err:
        raise FolderError(
            f"cannot create output folder {out}: {ancestor} does not accept new entries ({err.strerror}); "
            "choose another path."
        ) from err
    probe.rmdir()


def _swap_into_place(
    out: str | Path, target: Path, staging: Path, overwrite: bool, protect: Sequence[str | Path]
) -> bool:
    """Rename ``staging`` to ``target``, replacing a featvis folder there; returns True once it is in place."""
    # Check again: the folder may have changed while rendering.
    if os.path.lexists(target):
        _check_existing(out, target, overwrite, protect)
    try:
        # rename() replaces a missing or empty folder atomically.
        staging.rename(target)
        return True
    except OSError as err:
        if not os.path.lexists(target) or not overwrite:
            raise FolderError(
                f"cannot write output folder {out} ({err.strerror}); choose another path."
            ) from err
    aside = _unique_sibling(target, _OLD)
    target.rename(aside)
    try:
        staging.rename(target)
    except BaseException:
        aside.rename(target)  # put the previous folder back
        raise
    remove_owned(aside)
    return True


def remove_owned(folder: Path) -> None:
    """Delete the entries of a featvis folder that its manifest lists, then the folder if nothing else is left."""
    listed = read_manifest(folder)
    if listed is None:
        warnings.warn(f"kept {folder}: it has no valid featvis manifest.", stacklevel=3)
        return
    files, folders = listed
    for relative in sorted(files):
        path = folder / relative
        # Never follow a folder that was swapped for a link: only entries really inside ``folder`` are deleted.
        if _has_linked_parent(folder, relative) or (path.is_dir() and not path.is_symlink()):
            continue
        # The new folder is already in place: a file that cannot go is a leftover, reported below.
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    for relative in sorted(folders, key=lambda item: item.count("/"), reverse=True):
        path = folder / relative
        if not _has_linked_parent(folder, relative) and path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty: anything not listed stays
    (folder / MANIFEST_NAME).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        warnings.warn(f"kept {folder}: it holds entries that featvis did not write.", stacklevel=3)


def remove_stale_siblings(target: Path) -> None:
    """Remove staging and moved-aside folders of ``target`` left by runs that were killed."""
    parent = target.parent
    if not parent.is_dir():
        return
    for kind in (_PARTIAL, _OLD):
        prefix = f".{target.name}.{kind}-"
        for sibling in parent.iterdir():
            if not sibling.name.startswith(prefix) or sibling.is_symlink() or not sibling.is_dir():
                continue
            if _owner_is_running(sibling.name[len(prefix) :]):
                continue  # another render of the same folder is still writing it
            if kind == _PARTIAL:
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                remove_owned(sibling)


def _owner_is_running(suffix: str) -> bool:
    pid = suffix.split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _unique_sibling(target: Path, kind: str) -> Path:
    while True:
        path = target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
        if not os.path.lexists(path):
            return path


def _make_unique_dir(target: Path, kind: str) -> Path:
    # os.mkdir (unlike tempfile.mkdtemp's 0700) gives the folder the umask's permissions, as out will have.
    while True:
        path = _unique_sibling(target, kind)
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _make_parents(folder: Path, created: list[Path]) -> None:
    """Create ``folder`` and its missing parents, appending each one created to ``created``, outermost first."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
        created.append(path)


def _walk(folder: Path) -> Iterator[tuple[str, bool]]:
    """Every entry below ``folder`` as ``(relative POSIX path, is a real folder)``; links are not followed."""
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for name in sorted(dirs):
            path = base / name
            yield path.relative_to(folder).as_posix(), not path.is_symlink()
        for name in sorted(files):
            yield (base / name).relative_to(folder).as_posix(), False


def _list_tree(folder: Path) -> tuple[list[str], list[str]]:
    entries = list(_walk(folder))
    return sorted(p for p, is_dir in entries if not is_dir), sorted(p for p, is_dir in entries if is_dir)


def _is_inner_path(item: object) -> bool:
    if not isinstance(item, str) or not item or "\\" in item:
        return False
    path = PurePosixPath(item)
    return not path.is_absolute() and all(part not in ("", ".", "..") for part in item.split("/"))


def _has_linked_parent(folder: Path, relative: str) -> bool:
    path = folder
    for part in PurePosixPath(relative).parts[:-1]:
        path = path / part
        if path.is_symlink():
            return True
    return False


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk where the platform allows opening folders."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "FolderError",
    "check_destination",
    "read_manifest",
    "write_folder",
]
