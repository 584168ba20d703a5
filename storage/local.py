"""Local-directory backend: ``<root_dir>/<bucket>/<key>``, for development, tests and single-node demos.

Writes are atomic: the bytes go to a hidden ``.tmp-…`` file in the target directory, are fsynced,
then ``os.replace``-d onto the final name (and the directory is fsynced), so a reader or a crash
never leaves a partial object under a real key. Temp files are never listed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from common.errors import CollectorError, FatalError, TransientError
from storage.base import TEMP_PREFIX, InvalidKey, ObjectInfo, ObjectNotFound, validate_key, validate_prefix

# Errors that will not go away by retrying: wrong permissions, read-only mount, a file where a
# directory should be. Anything else (ENOSPC, EIO, ...) may clear up and is transient.
_FATAL_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


class LocalStore:
    """Objects as files under ``root_dir/bucket``; the bucket folder is created on demand."""

    def __init__(self, root_dir: str | os.PathLike[str], bucket: str) -> None:
        if not bucket or "/" in bucket or "\\" in bucket or bucket in (".", ".."):
            raise InvalidKey(f"invalid bucket folder name {bucket!r}")
        self.root_dir = Path(root_dir).absolute()
        self.bucket = bucket
        self.base = self.root_dir / bucket

    def describe(self) -> str:
        """``local:<absolute bucket folder>``."""
        return f"local:{self.base}"

    def put(self, key: str, data: bytes) -> None:
        """Write via a fsynced hidden temp file and ``os.replace``."""
        self._publish(key, data, replace=True)

    def put_new(self, key: str, data: bytes) -> bool:
        """Write via a fsynced hidden temp file hard-linked onto the final name, which fails if it exists."""
        return self._publish(key, data, replace=False)

    def _publish(self, key: str, data: bytes, *, replace: bool) -> bool:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f"{TEMP_PREFIX}{path.name}-{uuid.uuid4().hex}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                if replace:
                    os.replace(tmp, path)
                else:
                    try:
                        os.link(tmp, path)  # atomic, and never replaces an existing file
                    except FileExistsError:
                        return False
                    finally:
                        os.unlink(tmp)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_dir(path.parent)
            return True
        except OSError as exc:
            raise _translate(exc, f"put {key}") from exc

    def get(self, key: str) -> bytes:
        """Read the whole file; :class:`ObjectNotFound` if it does not exist."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            raise _translate(exc, f"get {key}") from exc

    def put_file(self, key: str, path: str) -> None:
        """Copy a local file in via a fsynced hidden temp file and ``os.replace``."""
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f"{TEMP_PREFIX}{target.name}-{uuid.uuid4().hex}"
            try:
                shutil.copyfile(path, tmp)
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _fsync_dir(target.parent)
        except OSError as exc:
            raise _translate(exc, f"put {key}") from exc

    def get_file(self, key: str, path: str) -> None:
        """Copy the object out into a local file."""
        source = self._path(key)
        try:
            shutil.copyfile(source, path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            raise _translate(exc, f"get {key}") from exc

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Walk the folder below the prefix's directory part; skip temp files."""
        validate_prefix(prefix)
        dir_part = prefix.rpartition("/")[0]
        start = self.base.joinpath(*dir_part.split("/")) if dir_part else self.base

        def on_error(exc: OSError) -> None:
            if not isinstance(exc, FileNotFoundError | NotADirectoryError):
                raise exc

        found: list[ObjectInfo] = []
        try:
            for dirpath, dirnames, filenames in os.walk(start, onerror=on_error):
                rel = Path(dirpath).relative_to(self.base).as_posix()
                here = "" if rel == "." else f"{rel}/"
                # Only descend where keys can still match the prefix.
                dirnames[:] = [d for d in dirnames if _may_match(f"{here}{d}/", prefix)]
                for name in filenames:
                    key = f"{here}{name}"
                    if name.startswith(TEMP_PREFIX) or not key.startswith(prefix):
                        continue
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue  # deleted while listing
                    updated = datetime.fromtimestamp(st.st_mtime, tz=UTC)
                    found.append(ObjectInfo(key=key, size=st.st_size, updated=updated))
        except OSError as exc:
            raise _translate(exc, f"list {prefix!r}") from exc
        found.sort(key=lambda info: info.key)
        return found

    def delete(self, key: str) -> None:
        """Unlink the file; missing is fine. Empty folders are left (a concurrent put may need them)."""
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise _translate(exc, f"delete {key}") from exc

    def exists(self, key: str) -> bool:
        """True if a regular file is stored under ``key``."""
        return self._path(key).is_file()

    def check(self) -> None:
        """Create the bucket folder if needed and prove it is writable with a throw-away temp file."""
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            probe = self.base / f"{TEMP_PREFIX}check-{uuid.uuid4().hex}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise _translate(exc, "check") from exc

    def _path(self, key: str) -> Path:
        return self.base.joinpath(*validate_key(key).split("/"))

    def __repr__(self) -> str:
        return f"LocalStore({self.describe()})"


def _may_match(folder: str, prefix: str) -> bool:
    """True if keys under ``folder`` (ending in "/") can start with ``prefix``."""
    return folder.startswith(prefix) or prefix.startswith(folder)


def _fsync_dir(path: Path) -> None:
    """Persist a rename: fsync the directory that holds the new entry."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _translate(exc: OSError, action: str) -> CollectorError:
    if exc.errno in _FATAL_ERRNOS:
        return FatalError(f"local storage {action}: {exc.strerror} ({exc.filename})")
    return TransientError(f"local storage {action}: {exc.strerror or exc} ({exc.filename})")
