"""Writing files so that a crash, a full disk or a size limit never leaves one cut short.

`write_atomic` writes a temporary file beside the target, fsyncs it and renames it over the
target: a reader (or the user, after a failure) sees the old file or the new one, never a part.
Used for the files a user keeps (a spec `nldsl fmt` rewrites, `-o` outputs) and for the runtime's
checkpoint pointers and logs. No torch here: the front end imports it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def text_bytes(text: str) -> bytes:
    """UTF-8 for a file we write. A file name that is not UTF-8 reaches Python with surrogates
    (PEP 383) and may be quoted in the text: it is written as its `\\udcXX` escape, which JSON reads
    back to the same name, instead of failing the write."""
    return text.encode("utf-8", "backslashreplace")


def write_file(path: Path, data: bytes) -> None:
    """Write, flush and fsync one file."""
    with naming(path), open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """A failed write (a full disk) names its file: the OSError of a write, a flush or an fsync
    carries no file name, and the user's one-line message would name none."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise _at(error, path) from None


def _at(error: OSError, path: Path) -> OSError:
    """The same error, about `path`."""
    return type(error)(error.errno, error.strerror, str(path))


def fsync_folder(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data` in one step; an existing file keeps its permissions, and a symbolic
    link keeps pointing where it did (the file it names is the one replaced). A device or a named
    pipe is written to as it is: replacing it by a file would break what it was."""
    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file() and not path.is_dir():
        # a device or a pipe (`-o /dev/stdout`, a FIFO) is written through, never renamed over
        with naming(path), open(path, "wb") as handle:
            handle.write(data)
        return
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write_file(temporary, data)
        if path.exists():
            shutil.copymode(path, temporary)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.filename == str(temporary) and error.errno is not None:  # about the user's file (a folder …)
            raise _at(error, path) from None
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def file_in_the_way(error: OSError) -> str:
    """For "Not a directory": the file standing where a path needs a folder (`runs` made by
    `echo > runs`), which the error alone does not name; "" for any other error."""
    if not isinstance(error, NotADirectoryError) or not error.filename:
        return ""
    for parent in Path(os.fsdecode(error.filename)).parents:
        if parent.is_file():
            return f" ({parent} is a file, not a folder)"
    return ""


def first_line(path: Path, limit: int = 512) -> bytes | None:
    """The first line of a file (at most `limit` bytes), None where it cannot be read: how an
    output a command wrote before (its banner) is told from a file of the user's own."""
    try:
        with open(path, "rb") as file:
            return file.readline(limit)
    except OSError:
        return None
