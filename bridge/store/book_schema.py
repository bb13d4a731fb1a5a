"""The address book's file (:mod:`bridge.store.book`): the schema and its migrations
(``SCHEMA_VERSION``, ``MIGRATIONS``), the mapping between rows and
:class:`~bridge.core.selection.PeerEntry`, and opening the file: WAL mode, ``quick_check``, the
schema version checked and migrated in the opening transaction, a corrupt file moved aside.

Functions taking the connection or the book's path; the guarantees are in the book's module
docstring. Logs as ``bridge.store.book``. Import these through :mod:`bridge.store.book`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from bridge.core import addrman
from bridge.core.selection import Kind, PeerEntry, group_of
from bridge.store.book_errors import AddressBookError, Corrupt, hint, is_corruption

log = logging.getLogger("bridge.store.book")

SCHEMA_VERSION: Final = 2
_WAL_LIMIT: Final = 4 * 1024 * 1024


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (0)")
    conn.execute(
        """
        CREATE TABLE peers (
            network       TEXT    NOT NULL,
            host          TEXT    NOT NULL,
            port          INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
            kind          TEXT    NOT NULL CHECK (kind IN ('onion', 'ipv4', 'ipv6')),
            source        TEXT    NOT NULL,
            source_rank   INTEGER NOT NULL,
            first_seen    REAL    NOT NULL,
            last_seen     REAL    NOT NULL,
            last_success  REAL,
            failures      INTEGER NOT NULL DEFAULT 0,
            backoff_until REAL    NOT NULL DEFAULT 0,
            addrv2        INTEGER NOT NULL DEFAULT 0,
            is_self       INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (network, host, port)
        )
        """
    )
    conn.execute("CREATE INDEX peers_evict ON peers "
                 "(network, failures DESC, last_seen, host, port)")


def _groups(source: str, host: str) -> tuple[str, str]:
    """``(source_group, addr_group)`` columns of an entry (see :mod:`bridge.store.book`)."""
    return addrman.source_group(source), group_of(host)


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Eclipse resistance: who told us (``source_group``) and the address's own group
    (``addr_group``) become columns with their indexes; every row is kept."""
    conn.execute("ALTER TABLE peers ADD COLUMN source_group TEXT NOT NULL DEFAULT 'other'")
    conn.execute("ALTER TABLE peers ADD COLUMN addr_group TEXT NOT NULL DEFAULT ''")
    rows = conn.execute("SELECT rowid, source, host FROM peers").fetchall()
    conn.executemany("UPDATE peers SET source_group = ?, addr_group = ? WHERE rowid = ?",
                     [(*_groups(str(src), str(host)), rowid) for rowid, src, host in rows])
    conn.execute("DROP INDEX IF EXISTS peers_evict")
    # the new table by source group, worst first; the tried table by address group
    conn.execute("CREATE INDEX peers_new ON peers "
                 "(network, source_group, last_success, failures DESC, last_seen)")
    conn.execute("CREATE INDEX peers_tried ON peers (network, addr_group, last_success)")


#: ``MIGRATIONS[v]`` upgrades schema ``v`` to ``v + 1`` (run inside one transaction).
MIGRATIONS: Final[dict[int, Callable[[sqlite3.Connection], None]]] = {
    0: _migrate_0_to_1, 1: _migrate_1_to_2}

COLUMNS: Final = ("network, host, port, kind, source, first_seen, last_seen, last_success, "
                  "failures, backoff_until, addrv2, is_self")


def row_entry(row: Sequence[Any]) -> PeerEntry:
    # columns are in PeerEntry field order; SQLite stores the flags as 0/1
    return PeerEntry._make([*row[:10], bool(row[10]), bool(row[11])])


def entry_addr_group(kind: Kind, host: str) -> str:
    """The ``addr_group`` column: the IPv4 /16, IPv6 /32 or onion of a normalised host."""
    return PeerEntry("", host, 1, kind, "", 0.0, 0.0).group


def open_db(path: Path, *, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """The book's connection, its schema migrated to :data:`SCHEMA_VERSION`; raises
    :class:`AddressBookError`, or :class:`Corrupt` for a file to move aside."""
    if not path.parent.is_dir():
        raise hint(path, FileNotFoundError(f"no directory {path.parent}"))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
    except OSError as exc:
        raise hint(path, exc) from exc
    try:
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise hint(path, exc) from exc
    try:
        _setup(conn, path, synchronous)
    except Corrupt:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        if is_corruption(exc):
            raise Corrupt(str(exc)) from exc
        raise hint(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _setup(conn: sqlite3.Connection, path: Path, synchronous: str) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise AddressBookError(
            f"address book {path}: SQLite refused WAL mode (got {mode!r}); put the "
            "data directory on a local filesystem")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
    check = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    if check != ["ok"]:
        raise Corrupt("quick_check: " + "; ".join(check[:3]))
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _schema_version(conn, path)
        if version > SCHEMA_VERSION:
            raise AddressBookError(
                f"address book {path} has schema version {version}, written by a newer "
                f"kaspa-tor-bridge (this one supports up to {SCHEMA_VERSION}); upgrade the "
                "bridge or move the file aside")
        for v in range(version, SCHEMA_VERSION):
            MIGRATIONS[v](conn)
            conn.execute("UPDATE schema_version SET version = ?", (v + 1,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _schema_version(conn: sqlite3.Connection, path: Path) -> int:
    tables = {str(r[0]) for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in tables:
        if tables:
            raise AddressBookError(
                f"{path} is an SQLite database but not an address book (tables: "
                f"{', '.join(sorted(tables))}); point the bridge at another file")
        return 0
    rows = conn.execute("SELECT version FROM schema_version").fetchall()
    if len(rows) != 1 or not isinstance(rows[0][0], int):
        raise Corrupt(f"schema_version table holds {rows!r}")
    return int(rows[0][0])


def move_aside(path: Path, why: str) -> Path:
    """Rename the corrupt file at ``path`` and its ``-wal``/``-shm`` to
    ``<name>.corrupt-<UTC time>[-wal|-shm]``; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while base.exists():
        n += 1
        base = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            try:
                os.replace(src, str(base) + suffix)
            except OSError as exc:
                raise hint(path, exc) from exc
    log.warning("address book %s is corrupt (%s): moved it to %s and started an empty book; "
                "peers will be re-learned from seeds and gossip", path, why, base)
    return base
