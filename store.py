"""Task persistence: SQLite by default, PostgreSQL when DATABASE_URL says so.

Every change is one conditional SQL statement, so concurrent writers (tasks, threads,
processes) cannot interleave a read and a write: a terminal status never changes, an
update never moves a task backwards, a webhook id is claimed once.
"""
import asyncio
import json
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

from cache import BoundedCache

TERMINAL = ("completed", "failed", "cancelled", "incomplete")
STATUS_RANK = {"queued": 0, "in_progress": 1, **{status: 2 for status in TERMINAL}}
WEBHOOK_MEMORY_SECONDS = 7 * 24 * 3600
ORPHAN_GRACE_SECONDS = 25  # OpenAI's create times out after 20 s: a task still without a response id then is an orphan
DOUBLE, TEXT, INTEGER = "DOUBLE PRECISION", "TEXT", "INTEGER"
TABLES = {
    "tasks": [("id", "TEXT PRIMARY KEY"), ("response_id", "TEXT UNIQUE"), ("owner", "TEXT NOT NULL"), ("account", TEXT),
              ("idempotency_key", TEXT), ("request_digest", TEXT), ("status", "TEXT NOT NULL"), ("prompt", "TEXT NOT NULL"),
              ("model", "TEXT NOT NULL"), ("reasoning_effort", TEXT), ("tools", TEXT), ("max_output_tokens", INTEGER),
              ("max_tool_calls", INTEGER), ("output_text", TEXT), ("refusal", TEXT), ("error", TEXT),
              ("incomplete_reason", TEXT), ("reasoning_summary", TEXT), ("sources", TEXT), ("citations", TEXT), ("steps", TEXT),
              ("usage", TEXT),
              ("cost_usd", DOUBLE), ("reserved_usd", DOUBLE), ("created_at", f"{DOUBLE} NOT NULL"),
              ("updated_at", f"{DOUBLE} NOT NULL"), ("started_at", DOUBLE), ("completed_at", DOUBLE), ("checked_at", DOUBLE),
              ("relay_holder", TEXT), ("relay_until", DOUBLE)],
    "progress_events": [("task_id", "TEXT NOT NULL"), ("seq", "INTEGER NOT NULL"), ("kind", "TEXT NOT NULL"),
                        ("data", "TEXT NOT NULL"), ("created_at", f"{DOUBLE} NOT NULL")],
    "webhook_events": [("id", "TEXT PRIMARY KEY"), ("received_at", f"{DOUBLE} NOT NULL"), ("done", "INTEGER NOT NULL DEFAULT 0")],
    "ended_sessions": [("id", "TEXT PRIMARY KEY"), ("expires_at", f"{DOUBLE} NOT NULL")],
    "emulated_responses": [("id", "TEXT PRIMARY KEY"), ("created_at", f"{DOUBLE} NOT NULL"), ("delay", f"{DOUBLE} NOT NULL"),
                           ("request", "TEXT NOT NULL"), ("cancelled_at", DOUBLE)],
}
TASK_COLUMNS = tuple(name for name, _ in TABLES["tasks"])
JSON_COLUMNS = ("tools", "sources", "citations", "steps", "usage")
RESULT_COLUMNS = ("output_text", "refusal", "error", "incomplete_reason", "reasoning_summary", "sources", "citations", "steps",
                  "usage", "cost_usd")
SCHEMA = [f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{name} {kind}' for name, kind in columns)})"
          for table, columns in TABLES.items()] + [
    "CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency ON tasks (owner, idempotency_key)",
    "CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner, created_at, id)",
    "CREATE INDEX IF NOT EXISTS tasks_by_account ON tasks (account, created_at)",
    "CREATE INDEX IF NOT EXISTS tasks_by_day ON tasks (created_at)",
    "CREATE INDEX IF NOT EXISTS webhook_events_age ON webhook_events (received_at)",
    "CREATE UNIQUE INDEX IF NOT EXISTS progress_by_task ON progress_events (task_id, seq)",
]
ADDED_DEFAULTS = {("webhook_events", "done"): "INTEGER NOT NULL DEFAULT 1"}
WEBHOOK_CLAIM_STALE_SECONDS = 10  # handling an event takes a retrieve (5 s at most) and a write
OPEN_RETRY_SECONDS = 5
CONNECT_SECONDS = 3  # an unreachable PostgreSQL answers 503 this fast, not after a long pool wait
RANK_SQL = "CASE status WHEN 'queued' THEN 0 WHEN 'in_progress' THEN 1 ELSE 2 END"
RUNNING_SQL = f"{RANK_SQL} < 2 AND (response_id IS NOT NULL OR created_at > :orphaned_before)"
INSERT_TASK = (f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)}) SELECT {', '.join(':' + c for c in TASK_COLUMNS)} "
               f"WHERE (SELECT COUNT(*) FROM tasks WHERE account = :account AND {RUNNING_SQL}) < :max_running "
               "ON CONFLICT DO NOTHING")
ADVANCE_TASK = (f"UPDATE tasks SET status = :status, {', '.join(f'{c} = :{c}' for c in RESULT_COLUMNS)}, "
                f"updated_at = :now, started_at = COALESCE(started_at, :started_at), completed_at = :completed_at "
                f"WHERE id = :id AND {RANK_SQL} < :rank")
ATTACH_RESPONSE = ("UPDATE tasks SET response_id = :response_id, updated_at = :now, checked_at = :now "
                   "WHERE id = :id AND response_id IS NULL")
ADOPT_RESPONSE = ("UPDATE tasks SET response_id = :response_id, status = 'queued', error = NULL, completed_at = NULL, "
                  "updated_at = :now, checked_at = :now WHERE id = :id AND response_id IS NULL")
CLAIM_CHECK = (f"UPDATE tasks SET checked_at = :now WHERE id = :id AND {RANK_SQL} < 2 "
               "AND response_id IS NOT NULL AND (checked_at IS NULL OR checked_at <= :due)")
SPENT_SQL = f"COALESCE(SUM(COALESCE(cost_usd, CASE WHEN {RANK_SQL} < 2 THEN reserved_usd END, 0)), 0)"
CLAIM_RELAY = (f"UPDATE tasks SET relay_holder = :holder, relay_until = :until WHERE id = :id AND {RANK_SQL} < 2 "
               "AND response_id IS NOT NULL AND (relay_until IS NULL OR relay_until < :now OR relay_holder = :holder)")


class StoreUnavailable(Exception):
    "The database cannot be reached or used."


class RunningCapReached(Exception):
    "The account already has as many running tasks as it may."


def new_task_row(**fields) -> dict:
    now = time.time()
    row = dict.fromkeys(TASK_COLUMNS)
    row.update({"status": "queued", "created_at": now, "updated_at": now, **fields})
    return row


def row_size(row: dict) -> int:
    return 512 + sum(len(row[k] or "") for k in ("prompt", "output_text", "error", "reasoning_summary"))


def _decode(row: dict | None) -> dict | None:
    if row is None: return None
    row = dict(row)
    for column in JSON_COLUMNS: row[column] = json.loads(row[column]) if row.get(column) else None
    return row


def _encoded(row: dict) -> dict:
    return {**row, **{column: json.dumps(row[column]) if row.get(column) is not None else None
                      for column in JSON_COLUMNS if column in row}}


class SqlTaskStore:
    """The store's contract, in SQL both SQLite and PostgreSQL run; subclasses only connect and execute.

    It opens on first use (so it works under any server, and on Vercel, where no start-up hook may run);
    after a failure to open, statements fail fast for a few seconds instead of queueing behind retries."""
    kind = "sql"
    _pruned_at = _emulated_pruned_at = 0.0
    _opened = False
    _failed_at = -OPEN_RETRY_SECONDS

    @cached_property
    def _open_lock(self) -> asyncio.Lock: return asyncio.Lock()

    async def _connect(self): raise NotImplementedError

    async def open(self):
        "Connect, create the schema, add missing columns; StoreUnavailable when it cannot."
        async with self._open_lock:
            if self._opened: return self
            if time.monotonic() - self._failed_at < OPEN_RETRY_SECONDS:
                raise StoreUnavailable("the database was unreachable moments ago")
            try:
                await self._connect()
                await self.migrate()
            except StoreUnavailable:
                self._failed_at = time.monotonic()
                await self.close()
                raise
            self._opened = True
        return self

    @cached_property
    def _final_rows(self) -> BoundedCache:
        return BoundedCache(max_bytes=32 * 1024 * 1024, size=row_size)

    async def _execute_sql(self, sql: str, params: dict) -> int: raise NotImplementedError
    async def _fetch_sql(self, sql: str, params: dict) -> list[dict]: raise NotImplementedError
    async def close(self): pass

    async def _execute(self, sql: str, params: dict) -> int:
        "Run a change; the number of rows it changed."
        if not self._opened: await self.open()
        return await self._execute_sql(sql, params)

    async def _fetch(self, sql: str, params: dict) -> list[dict]:
        if not self._opened: await self.open()
        return await self._fetch_sql(sql, params)

    async def _fetchone(self, sql: str, params: dict) -> dict | None:
        rows = await self._fetch(sql, params)
        return _decode(rows[0]) if rows else None

    async def ping(self):
        await self._fetch("SELECT 1 AS ok", {})

    async def _execute_for(self, account: str, sql: str, params: dict) -> int:
        "Run a change that must not interleave with another for the same account (PostgreSQL locks; SQLite has one writer)."
        return await self._execute(sql, params)

    async def create(self, row: dict, max_running: int = 1 << 30) -> tuple[dict, bool]:
        """Insert a task if its account has fewer than `max_running` tasks running (a task whose queueing was
        interrupted does not count once its grace has passed); with an idempotency key already used by this owner,
        return that task instead. RunningCapReached when the cap refused it."""
        params = {**_encoded(row), "account": row["account"] or row["owner"], "max_running": max_running,
                  "orphaned_before": time.time() - ORPHAN_GRACE_SECONDS}
        if await self._execute_for(params["account"], INSERT_TASK, params) == 1: return _decode(_encoded(row)), True
        existing = await self._fetchone("SELECT * FROM tasks WHERE owner = :owner AND idempotency_key = :key",
                                        {"owner": row["owner"], "key": row["idempotency_key"]})
        if existing is None: raise RunningCapReached()
        return existing, False

    async def count_running(self, account: str) -> int:
        rows = await self._fetch(f"SELECT COUNT(*) AS n FROM tasks WHERE account = :account AND {RUNNING_SQL}",
                                 {"account": account, "orphaned_before": time.time() - ORPHAN_GRACE_SECONDS})
        return rows[0]["n"]

    async def spent_since(self, since: float, account: str | None = None) -> float:
        "US dollars spent (or, for running tasks, reserved) on tasks created since `since`, by one account or all."
        where = "created_at >= :since" + (" AND account = :account" if account else "")
        rows = await self._fetch(f"SELECT {SPENT_SQL} AS spent FROM tasks WHERE {where}", {"since": since, "account": account})
        return float(rows[0]["spent"])

    async def orphans(self, older_than: float) -> list[dict]:
        "Tasks whose queueing was interrupted before their response id was stored."
        return [_decode(row) for row in await self._fetch(
            f"SELECT * FROM tasks WHERE response_id IS NULL AND {RANK_SQL} < 2 AND created_at < :before",
            {"before": older_than})]

    async def get(self, task_id: str) -> dict | None:
        """The task; a final task with a response never changes again, so it is kept in memory once read (one that
        failed before OpenAI answered may still be adopted by its response: see `adopt`)."""
        if task := self._final_rows.get(task_id): return task
        task = await self._fetchone("SELECT * FROM tasks WHERE id = :id", {"id": task_id})
        return self._final_rows.put(task_id, task) if task and task["status"] in TERMINAL and task["response_id"] else task

    async def get_by_response(self, response_id: str) -> dict | None:
        return await self._fetchone("SELECT * FROM tasks WHERE response_id = :rid", {"rid": response_id})

    async def attach_response(self, task_id: str, response_id: str) -> bool:
        return await self._execute(ATTACH_RESPONSE, {"id": task_id, "response_id": response_id, "now": time.time()}) == 1

    async def adopt(self, task_id: str, response_id: str) -> bool:
        """Give a task whose queueing was interrupted (no response id stored; still queued, or failed by this app for
        that reason, never by OpenAI) the response OpenAI made for it, and reopen it so OpenAI's state is recorded."""
        return await self._execute(ADOPT_RESPONSE, {"id": task_id, "response_id": response_id, "now": time.time()}) == 1

    async def forget_idempotency_key(self, task_id: str):
        await self._execute("UPDATE tasks SET idempotency_key = NULL WHERE id = :id", {"id": task_id})

    async def advance(self, task_id: str, status: str, **result) -> bool:
        """Move a task forward to `status` with its result (RESULT_COLUMNS); False (and no change) when that would
        not be forward."""
        now = time.time()
        params = {"id": task_id, "status": status, "rank": STATUS_RANK[status], "now": now,
                  **_encoded({**dict.fromkeys(RESULT_COLUMNS), **result}),
                  "started_at": now if status == "in_progress" else None, "completed_at": now if status in TERMINAL else None}
        return await self._execute(ADVANCE_TASK, params) == 1

    async def claim_check(self, task_id: str, interval: float) -> bool:
        "Claim the right to ask OpenAI about a running task: True for one caller per interval."
        now = time.time()
        return await self._execute(CLAIM_CHECK, {"id": task_id, "now": now, "due": now - interval}) == 1

    async def migrate(self):
        "Add the columns that a database made by an older version lacks (idempotent, safe to race)."
        for table, columns in TABLES.items():
            for column, declaration in columns:
                await self._add_column(table, column, ADDED_DEFAULTS.get((table, column), declaration.split(" UNIQUE")[0]))

    async def _add_column(self, table: str, column: str, declaration: str):
        try: await self._fetch_sql(f"SELECT {column} FROM {table} LIMIT 0", {})
        except StoreUnavailable:
            try: await self._execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}", {})
            except StoreUnavailable: await self._fetch_sql(f"SELECT {column} FROM {table} LIMIT 0", {})

    async def claim_webhook(self, webhook_id: str) -> str:
        """Claim a webhook id for handling: "claimed" (handle it), "done" (handled before) or "busy" (being
        handled elsewhere right now). A claim left unfinished for a minute is taken over. Ids are kept a week."""
        now = time.time()
        if now - self._pruned_at > 3600:
            self._pruned_at = now
            await self._execute("DELETE FROM webhook_events WHERE received_at < :old", {"old": now - WEBHOOK_MEMORY_SECONDS})
        params = {"id": webhook_id, "now": now, "stale": now - WEBHOOK_CLAIM_STALE_SECONDS}
        if await self._execute("INSERT INTO webhook_events (id, received_at, done) VALUES (:id, :now, 0) ON CONFLICT DO NOTHING", params):
            return "claimed"
        if await self._execute("UPDATE webhook_events SET received_at = :now WHERE id = :id AND done = 0 AND received_at < :stale", params):
            return "claimed"
        rows = await self._fetch("SELECT done FROM webhook_events WHERE id = :id", params)
        return "done" if rows and rows[0]["done"] else "busy" if rows else await self.claim_webhook(webhook_id)

    async def finish_webhook(self, webhook_id: str):
        await self._execute("UPDATE webhook_events SET done = 1 WHERE id = :id", {"id": webhook_id})

    async def release_webhook(self, webhook_id: str):
        "Forget a webhook id whose handling failed, so that OpenAI's retry is handled."
        await self._execute("DELETE FROM webhook_events WHERE id = :id AND done = 0", {"id": webhook_id})

    async def add_emulated(self, response_id: str, created_at: float, delay: float, request: dict):
        "Keep a demo response's record (records over a day old are dropped: the emulator's memory is bounded)."
        await self._execute("INSERT INTO emulated_responses (id, created_at, delay, request) VALUES (:id, :created_at, :delay, "
                            ":request)", {"id": response_id, "created_at": created_at, "delay": delay, "request": json.dumps(request)})
        if created_at - self._emulated_pruned_at > 3600:
            self._emulated_pruned_at = created_at
            await self._execute("DELETE FROM emulated_responses WHERE created_at < :old", {"old": created_at - 24 * 3600})

    async def emulated(self, response_id: str) -> dict | None:
        rows = await self._fetch("SELECT * FROM emulated_responses WHERE id = :id", {"id": response_id})
        return {**rows[0], "request": json.loads(rows[0]["request"])} if rows else None

    async def cancel_emulated(self, response_id: str, at: float):
        await self._execute("UPDATE emulated_responses SET cancelled_at = :at WHERE id = :id AND cancelled_at IS NULL",
                            {"id": response_id, "at": at})

    async def claim_relay(self, task_id: str, holder: str, seconds: float) -> bool:
        "Take (or keep) the lease on reading a running task's stream: True for one holder at a time."
        now = time.time()
        return await self._execute(CLAIM_RELAY, {"id": task_id, "holder": holder, "until": now + seconds, "now": now}) == 1

    async def release_relay(self, task_id: str, holder: str):
        await self._execute("UPDATE tasks SET relay_until = NULL WHERE id = :id AND relay_holder = :holder",
                            {"id": task_id, "holder": holder})

    async def append_progress(self, task_id: str, events: list[tuple[int, str, str]]):
        "Record progress events (sequence number, kind, JSON data) in one statement; one already recorded is kept."
        if not events: return
        params, rows = {"task_id": task_id, "now": time.time()}, []
        for n, (seq, kind, data) in enumerate(events):
            params.update({f"s{n}": seq, f"k{n}": kind, f"d{n}": data})
            rows.append(f"(:task_id, :s{n}, :k{n}, :d{n}, :now)")
        await self._execute(f"INSERT INTO progress_events (task_id, seq, kind, data, created_at) VALUES {', '.join(rows)} "
                            "ON CONFLICT DO NOTHING", params)

    async def progress_after(self, task_id: str, after: int) -> list[dict]:
        "The recorded progress of a task after sequence number `after`, in order."
        return await self._fetch("SELECT seq, kind, data FROM progress_events WHERE task_id = :task_id AND seq > :after "
                                 "ORDER BY seq", {"task_id": task_id, "after": after})

    async def progress_extent(self, task_id: str) -> tuple[int, int]:
        "How many progress events a task has recorded, and the last one's sequence number (-1 for none)."
        rows = await self._fetch("SELECT COUNT(*) AS n, MAX(seq) AS last FROM progress_events WHERE task_id = :task_id",
                                 {"task_id": task_id})
        return rows[0]["n"], -1 if rows[0]["last"] is None else rows[0]["last"]

    async def end_session(self, session_id: str, expires_at: float):
        "Remember a signed-out session until its cookie would have expired anyway."
        await self._execute("INSERT INTO ended_sessions (id, expires_at) VALUES (:id, :expires_at) ON CONFLICT DO NOTHING",
                            {"id": session_id, "expires_at": expires_at})
        await self._execute("DELETE FROM ended_sessions WHERE expires_at < :now", {"now": time.time()})

    async def session_ended(self, session_id: str) -> bool:
        return bool(await self._fetch("SELECT 1 AS ended FROM ended_sessions WHERE id = :id", {"id": session_id}))

    async def list_for_owner(self, owner: str, limit: int = 20, before: tuple[float, str] | None = None) -> list[dict]:
        "The owner's tasks, newest first; `before` is the (created_at, id) of the last task of the previous page."
        after_cursor = "AND (created_at < :created_at OR (created_at = :created_at AND id < :id))" if before else ""
        created_at, task_id = before or (None, None)
        rows = await self._fetch(
            f"SELECT * FROM tasks WHERE owner = :owner {after_cursor} ORDER BY created_at DESC, id DESC LIMIT :limit",
            {"owner": owner, "created_at": created_at, "id": task_id, "limit": limit})
        return [_decode(row) for row in rows]


class SqliteTaskStore(SqlTaskStore):
    """SQLite in WAL mode, never blocking the event loop for long.

    Every statement is an indexed lookup or a one-row change taking some 10-50 us, so it runs on the
    event loop's thread (a hop to another thread costs over 100 us). A read never waits in WAL. A write
    tries the lock without waiting; if another process holds it, the write is retried on a dedicated
    thread, which waits up to 10 s for the lock."""
    kind = "sqlite"

    def __init__(self, path: str):
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None

    def _connection(self, busy_ms: int) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout={busy_ms}")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _create(self):
        if self.path != ":memory:": Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = self._connection(10_000)
        db.execute("PRAGMA journal_mode=WAL")
        for statement in SCHEMA: db.execute(statement)
        self._db = db

    async def _run(self, fn, *args):
        try: return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except (sqlite3.Error, OSError) as exc: raise StoreUnavailable(f"SQLite at {self.path}: {exc}") from exc

    async def _connect(self):
        await self._run(self._create)
        try:
            self._reader = self._connection(1_000)
            self._reader.execute("PRAGMA query_only=ON")
            self._writer = self._connection(0)
        except sqlite3.Error as exc: raise StoreUnavailable(f"SQLite at {self.path}: {exc}") from exc

    async def close(self):
        for connection in (self._reader, self._writer):
            if connection is not None: connection.close()
        if self._db is not None: await self._run(self._db.close)
        self._db = self._reader = self._writer = None
        self._opened = False

    async def _execute_sql(self, sql: str, params: dict) -> int:
        try: return self._writer.execute(sql, params).rowcount
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc): raise StoreUnavailable(f"SQLite at {self.path}: {exc}") from exc
        except sqlite3.Error as exc: raise StoreUnavailable(f"SQLite at {self.path}: {exc}") from exc
        return await self._run(lambda: self._db.execute(sql, params).rowcount)

    async def _fetch_sql(self, sql: str, params: dict) -> list[dict]:
        try: return [dict(row) for row in self._reader.execute(sql, params).fetchall()]
        except sqlite3.Error as exc: raise StoreUnavailable(f"SQLite at {self.path}: {exc}") from exc


class PostgresTaskStore(SqlTaskStore):
    """PostgreSQL through psycopg 3's async connection pool."""
    kind = "postgresql"

    def __init__(self, url: str, max_size: int = 10):
        self.url, self.max_size, self._pool = url, max_size, None

    async def _connect(self):
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool
        self._pool = AsyncConnectionPool(self.url, min_size=1, max_size=self.max_size, open=False, timeout=CONNECT_SECONDS,
                                         check=AsyncConnectionPool.check_connection,
                                         kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": CONNECT_SECONDS})
        try:
            await self._pool.open(wait=True, timeout=CONNECT_SECONDS * 2)
            async with self._pool.connection() as conn:
                await conn.execute("SELECT pg_advisory_lock(727274)")
                try:
                    for statement in SCHEMA: await conn.execute(statement)
                finally: await conn.execute("SELECT pg_advisory_unlock(727274)")
        except Exception as exc:
            await self._pool.close()
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {_without_password(str(exc))}") from exc

    async def close(self):
        if self._pool is not None: await self._pool.close()
        self._opened = False

    async def _run(self, sql: str, params: dict, fetch: bool, lock: str | None = None):
        "Run one statement; with `lock`, in a transaction that first takes an advisory lock on that key."
        import psycopg
        try:
            async with self._pool.connection(timeout=CONNECT_SECONDS) as conn:
                if lock is None:
                    cursor = await conn.execute(_pyformat(sql), params)
                    return await cursor.fetchall() if fetch else cursor.rowcount
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%(lock)s))", {"lock": lock})
                    return (await conn.execute(_pyformat(sql), params)).rowcount
        except (psycopg.Error, TimeoutError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {_without_password(str(exc))}") from exc

    async def _execute_sql(self, sql: str, params: dict) -> int: return await self._run(sql, params, fetch=False)
    async def _fetch_sql(self, sql: str, params: dict) -> list[dict]: return await self._run(sql, params, fetch=True)

    async def _execute_for(self, account: str, sql: str, params: dict) -> int:
        if not self._opened: await self.open()
        return await self._run(sql, params, fetch=False, lock=account)


def _pyformat(sql: str) -> str:
    "`:name` placeholders as psycopg's `%(name)s`."
    return re.sub(r"(?<![:\w]):([a-z_][a-z0-9_]*)", r"%(\1)s", sql.replace("%", "%%"))


def _without_password(text: str) -> str:
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def sqlite_path(url: str) -> str:
    "The file of a SQLAlchemy-style sqlite URL: sqlite:///relative.db, sqlite:////absolute.db."
    return url.split(":///", 1)[1]


def store_for(url: str) -> "SqlTaskStore":
    "The store DATABASE_URL names (config checked its form)."
    if url.startswith("sqlite:"): return SqliteTaskStore(sqlite_path(url))
    return PostgresTaskStore(url.replace("postgresql+psycopg:", "postgresql:", 1))
