"""The stores the benchmark's apps run on: a fresh SQLite file each, or a fresh PostgreSQL schema each (dropped after)."""
import contextlib
import secrets
import sqlite3
from pathlib import Path

from harness import measured


class SqliteStores:
    kind = "sqlite"

    def __init__(self, workdir: Path):
        self.workdir = workdir

    def new_url(self, label: str) -> str:
        return f"sqlite:///{self.workdir / label / 'tasks.db'}"

    def insert(self, url: str, rows):
        "Add task rows to the store at `url` (its app has created the schema), then refresh the planner's statistics."
        columns = measured("store").TASK_COLUMNS
        sql = f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        with contextlib.closing(sqlite3.connect(url.split(":///", 1)[1], timeout=30)) as db:
            with db:
                db.executemany(sql, ([row[c] for c in columns] for row in rows))
            db.execute("ANALYZE")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self): pass


class PostgresStores:
    kind = "postgresql"

    def __init__(self, url: str):
        import psycopg
        self.psycopg, self.url, self.schemas = psycopg, url, []

    def new_url(self, label: str) -> str:
        schema = f"bench_{label}_{secrets.token_hex(4)}"
        with self.psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        self.schemas.append(schema)
        return f"{self.url}{'&' if '?' in self.url else '?'}options=-csearch_path%3D{schema}"

    def insert(self, url: str, rows):
        "As SqliteStores.insert, with COPY."
        columns = measured("store").TASK_COLUMNS
        with self.psycopg.connect(url, autocommit=True) as conn:
            with conn.cursor().copy(f"COPY tasks ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows: copy.write_row([row[c] for c in columns])
            conn.execute("ANALYZE tasks")

    def close(self):
        with contextlib.suppress(Exception), self.psycopg.connect(self.url, autocommit=True) as conn:
            for schema in self.schemas: conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.schemas = []


def stores_for(database_url: str, workdir: Path):
    "PostgreSQL schemas on `database_url` when given, else SQLite files in `workdir`."
    return PostgresStores(database_url) if database_url else SqliteStores(workdir)
