"""How the address book (:mod:`bridge.store.book`) meets errors: :class:`AddressBookError`,
telling a corrupt file from a locked, read-only or full one, the remedy an opening error names,
and the error tolerance of the methods after a successful open (``on_error="log"``: the first
failure logged at ERROR, the rest counted, the recovery logged after a quiet period; see the
book's module docstring).

Functions taking the book (a :class:`Tolerant`) or its path; no SQL of the book's own. Logs as
``bridge.store.book``. Import these through :mod:`bridge.store.book`.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, Final, Literal, ParamSpec, Protocol, TypeVar

from bridge.core.errors import BridgeError, Fault

log = logging.getLogger("bridge.store.book")

_SQLITE_READONLY: Final = 8
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_NOTADB: Final = 26

_P = ParamSpec("_P")
_R = TypeVar("_R")


class AddressBookError(BridgeError):
    """The address book file cannot be used; the message names the file and the remedy."""

    fault = Fault.LOCAL
    action = "startup aborted"


class Tolerant(Protocol):
    """What the error tolerance reads and counts on the book
    (:class:`~bridge.store.book.AddressBook` has it)."""

    path: Path
    on_error: Literal["log", "raise"]
    recover_after: float
    #: database errors after opening (with on_error="log"), in all and since the last success
    errors: int
    failing: int
    last_error: str | None
    _failing_since: float | None
    _last_failure: float


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return False  # locked, read-only, cannot open, disk I/O: not the file's contents
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    msg = str(exc).lower()
    return "not a database" in msg or "malformed" in msg


class Corrupt(Exception):
    pass


def fs_problem(path: Path, exc: BaseException) -> str | None:
    """'read-only' / 'full' when the filesystem holding the book at ``path`` is the cause."""
    code = getattr(exc, "sqlite_errorcode", None)
    code = code & 0xFF if isinstance(code, int) else None
    try:
        vfs = os.statvfs(path.parent)
    except OSError:
        vfs = None
    if getattr(exc, "errno", None) == errno.EROFS or (
            code == _SQLITE_READONLY and vfs is not None and vfs.f_flag & os.ST_RDONLY):
        return "read-only"
    if getattr(exc, "errno", None) == errno.ENOSPC or code == _SQLITE_FULL:
        return "full"
    return None


def hint(path: Path, exc: BaseException) -> AddressBookError:
    """The :class:`AddressBookError` for ``exc`` met opening the book at ``path``, naming the
    file, the cause and what to do."""
    msg = str(exc)
    low = msg.lower()
    fs = fs_problem(path, exc)
    if fs == "read-only":
        what = (f"the filesystem holding {path.parent} is mounted read-only; the "
                "bridge must be able to write its data directory (remount it read-write "
                "or point data_dir at a writable directory)")
    elif fs == "full":
        what = f"the disk holding {path.parent} is full; free some space"
    elif not path.parent.is_dir():
        what = (f"directory {path.parent} does not exist; create the data directory "
                "or point the bridge at an existing one")
    elif "locked" in low or "busy" in low:
        what = ("the file is locked by another process; is a second kaspa-tor-bridge "
                "running with the same data directory?")
    elif isinstance(exc, PermissionError) or "readonly" in low or "read-only" in low \
            or "unable to open" in low or "permission" in low:
        what = (f"cannot read and write it as uid {os.getuid()}; fix the ownership or "
                f"permissions of {path} (and its -wal/-shm files) and of "
                f"{path.parent}, which must be writable")
    else:
        what = "check the file and the disk (space, I/O errors)"
    return AddressBookError(f"address book {path}: {msg}: {what}")


_B = TypeVar("_B", bound=Tolerant)


def tolerant(default: Callable[[], Any], what: str, *, write: bool = True,
             ) -> Callable[[Callable[Concatenate[_B, _P], _R]],
                           Callable[Concatenate[_B, _P], _R]]:
    """With ``on_error="log"``: a database error after opening returns ``default()`` (see the
    book's module docstring). Programming errors (``ValueError``, a closed book, a violated
    constraint) still raise. Only a successful *write* ends a failure period (reads work on a
    full disk)."""

    def deco(fn: Callable[Concatenate[_B, _P], _R]) -> Callable[Concatenate[_B, _P], _R]:
        @functools.wraps(fn)
        def wrapper(self: _B, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                result = fn(self, *args, **kwargs)
            except sqlite3.DatabaseError as exc:
                if self.on_error == "raise" or isinstance(exc, sqlite3.IntegrityError):
                    raise
                failed(self, what, exc)
                value: _R = default()
                return value
            if write:
                worked(self)
            return result

        return wrapper

    return deco


def failed(book: Tolerant, what: str, exc: sqlite3.Error) -> None:
    book.errors += 1
    book.failing += 1
    book.last_error = f"{what}: {exc}"
    book._last_failure = time.monotonic()
    if book._failing_since is not None:
        return  # logged once per failure period
    book._failing_since = time.monotonic()
    fs = fs_problem(book.path, exc)
    cause = {"full": "the disk is full", "read-only": "the filesystem is read-only"}.get(
        fs or "", "a database error")
    log.error("address book %s: %s failed (%s: %s); the bridge keeps relaying, but peers "
              "and their state are not saved until writes succeed again (further failures "
              "are counted, not logged)", book.path, what, cause, exc)


def worked(book: Tolerant) -> None:
    if book._failing_since is None \
            or time.monotonic() - book._last_failure < book.recover_after:
        return
    log.warning("address book %s works again (%d operations failed over %.0fs; last: %s)",
                book.path, book.failing, time.monotonic() - book._failing_since,
                book.last_error)
    book._failing_since = None
    book.failing = 0
