"""The case store's SQLite schema and its versioned migrations, applied when a store is opened.

A migration is a list of SQL statements; :data:`MIGRATIONS` ``[i]`` brings a database from
version ``i`` to ``i + 1``. A database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bloodcell.core.errors import DataError

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE cases (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            accession TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            target INTEGER NOT NULL DEFAULT 100 CHECK (target >= 1),
            created TEXT NOT NULL,
            updated TEXT NOT NULL)""",
        """CREATE TABLE cells (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
            sha256 TEXT NOT NULL,
            ext TEXT NOT NULL,
            filename TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            predicted TEXT NOT NULL,
            probabilities TEXT NOT NULL,
            confidence REAL NOT NULL,
            uncertain INTEGER NOT NULL,
            not_a_blood_cell INTEGER,
            framing TEXT,
            label TEXT,
            reviewer TEXT,
            reviewed_at TEXT,
            model TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL)""",
        "CREATE INDEX cells_case ON cells(case_id)",
        "CREATE INDEX cells_sha256 ON cells(sha256)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            cell_id INTEGER REFERENCES cells(id) ON DELETE CASCADE,
            case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
            who TEXT,
            what TEXT NOT NULL,
            old TEXT,
            new TEXT,
            at TEXT NOT NULL)""",
        "CREATE INDEX events_case ON events(case_id)",
    ],
    [
        # Whole smear fields: the field image, and each cell found in it keeps its box there.
        """CREATE TABLE fields (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            case_id INTEGER NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
            sha256 TEXT NOT NULL,
            ext TEXT NOT NULL,
            filename TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            rbc_px REAL,
            platelets_by_size INTEGER NOT NULL DEFAULT 0,
            left_to_neighbour INTEGER NOT NULL DEFAULT 0,
            created TEXT NOT NULL)""",
        "CREATE INDEX fields_case ON fields(case_id)",
        "ALTER TABLE cells ADD COLUMN field_id INTEGER REFERENCES fields(id) ON DELETE CASCADE",
        "ALTER TABLE cells ADD COLUMN box TEXT",
        "ALTER TABLE cells ADD COLUMN at_border INTEGER",
    ],
    [
        # The model's familiarity check: the cell is unlike its training cells (null: no such check).
        "ALTER TABLE cells ADD COLUMN unfamiliar INTEGER",
    ],
]

#: The schema version this code writes.
VERSION = len(MIGRATIONS)
DATABASE = "cases.sqlite"


def connect(folder: Path) -> sqlite3.Connection:
    """A connection to the store's database: write-ahead log, foreign keys on, rows as mappings.

    Transactions are explicit (``isolation_level=None``); a writer waits up to 30 s for another.
    """
    db = sqlite3.connect(folder / DATABASE, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def _version(db: sqlite3.Connection) -> int:
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied TEXT NOT NULL)")
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(db: sqlite3.Connection, now: str, migrations: list[list[str]] | None = None) -> int:
    """Apply the migrations the database lacks, each in its own transaction; return the version.

    Raises
    ------
    DataError
        When the database was written by a newer bloodcell (its version is past the last migration).
    """
    migrations = MIGRATIONS if migrations is None else migrations
    db.execute("PRAGMA journal_mode = WAL")
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = _version(db)
            if version > len(migrations):
                raise DataError(f"The case store is at schema version {version}, newer than this bloodcell "
                                f"knows ({len(migrations)}). Upgrade bloodcell to open it.")
            if version == len(migrations):
                db.execute("COMMIT")
                return version
            for statement in migrations[version]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version + 1, now))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
