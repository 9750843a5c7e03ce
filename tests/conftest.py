import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import Settings, new_webhook_secret  # noqa: E402
from emulator import Emulator, signed_headers  # noqa: E402
from inprocess import StreamingASGITransport  # noqa: E402
from web import create_app  # noqa: E402

PG_URL = os.environ.get("TEST_DATABASE_URL", "")


async def _pg_schema_url() -> tuple[str, str]:
    "A fresh schema on the test server, and a URL whose connections use it."
    import psycopg
    schema = "test_" + secrets.token_hex(6)
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        await conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in PG_URL else "?"
    return schema, f"{PG_URL}{separator}options=-csearch_path%3D{schema}"


async def _drop_schema(schema: str):
    import psycopg
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")


def require(tool: str, available: bool, how: str):
    "Skip a test whose tool is missing, saying how to get it; in CI, fail instead (CI must run everything)."
    if available: return
    if os.environ.get("CI"): pytest.fail(f"CI must run this test, and {tool} is missing: {how}", pytrace=False)
    pytest.skip(f"{tool} is missing: {how}")


def require_postgres():
    require("PostgreSQL", bool(PG_URL), "set TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tasks.db"
        return
    async for url in postgres_schema(): yield url


@pytest.fixture
async def postgres_url():
    "A fresh schema on the PostgreSQL server of TEST_DATABASE_URL, for tests about PostgreSQL alone."
    async for url in postgres_schema(): yield url


async def postgres_schema():
    require_postgres()
    schema, url = await _pg_schema_url()
    try: yield url
    finally: await _drop_schema(schema)


async def wait_for(condition, timeout: float = 10.0, interval: float = 0.05):
    "Await `condition()` (sync or async) until it is truthy, and return its value; fail after `timeout` seconds."
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value): value = await value
        if value: return value
        if time.monotonic() > deadline: raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def wait_until(condition, timeout: float = 15.0, interval: float = 0.05):
    "`wait_for` for synchronous code (tests that drive servers in other processes)."
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline: raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return value


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path}/tasks.db", demo_delay_seconds=0.4, reconcile_seconds=3600,
                    session_secret="test-session-secret", max_prompt_chars=2000, allowed_hosts=("testserver", "127.0.0.1"))


class AppHarness:
    """An app with the real SDK, the emulator and a real SQLite file, and an HTTP client bound to it."""

    def __init__(self, app, emulator=None):
        self.app = app
        self.client = httpx2.AsyncClient(transport=StreamingASGITransport(app), base_url="http://testserver")
        self.services = app.state.services
        self.emulator = emulator or self.services.emulator
        self.secret = self.services.gateway.webhook_secret

    async def store(self): return self.services.store

    async def close(self):
        await self.client.aclose()
        await self.services.close()

    async def queue(self, prompt="Write a long report on tides", **kw):
        return await self.client.post("/api/queue", json={"prompt": prompt, **kw})

    async def status(self, task_id, **kw): return await self.client.get(f"/api/status/{task_id}", **kw)

    async def wait_status(self, task_id, wanted="completed", timeout=10):
        async def reached():
            task = await (await self.store()).get(task_id)
            return task if task["status"] == wanted else None
        return await wait_for(reached, timeout)

    def without_relay(self):
        "Record no stream: a task then ends only through its webhook or reconcile (as on Vercel, with no viewer)."
        self.services.tasks.progress.relays_outlive_requests = False
        return self

    async def openai_status_is(self, response_id: str, wanted: str) -> bool:
        "Whether OpenAI (the emulator) now says the response has `wanted` status."
        return await self.emulator.status_of(response_id) == wanted

    async def deliver(self, event: dict | bytes, headers: dict | None = None, **sign_kw):
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        headers = headers if headers is not None else signed_headers(self.secret, body, **sign_kw)
        return await self.client.post("/api/webhook", content=body, headers=headers)


@pytest.fixture
async def make_harness(settings):
    "Build app harnesses with settings overridden; all are closed after the test."
    made = []

    async def make(**overrides) -> AppHarness:
        made.append(AppHarness(create_app(replace(settings, **overrides))))
        return made[-1]
    yield make
    for harness in made: await harness.close()


@pytest.fixture
async def make_openai_harness(settings):
    """Apps in OpenAI mode (a key set) whose SDK reaches an emulator instead of the network."""
    made = []

    async def make(**overrides) -> AppHarness:
        openai_settings = replace(settings, openai_api_key="sk-proj-TESTKEY0123456789abcdef", webhook_secret=new_webhook_secret(),
                                  base_url="http://emulator.test/v1", **overrides)
        emulator = Emulator(None, openai_settings.webhook_secret, openai_settings.demo_delay_seconds)
        http_client = httpx2.AsyncClient(transport=StreamingASGITransport(emulator.app))
        app = create_app(openai_settings, http_client=http_client)
        emulator.webhook_target = app
        made.append(AppHarness(app, emulator))
        return made[-1]
    yield make
    for harness in made:
        await harness.emulator.stop()
        await harness.close()


@pytest.fixture
async def harness(make_harness):
    return await make_harness()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


APP_VARIABLES = ("OPENAI_API_KEY", "OPENAI_WEBHOOK_SECRET", "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_MODELS",
                 "DATABASE_URL", "SESSION_SECRET", "APP_ACCESS_TOKENS", "QUEUE_RATE", "RATE_LIMIT_STORAGE_URL",
                 "MAX_RUNNING_PER_OWNER", "MAX_PROMPT_CHARS", "RECONCILE_SECONDS", "DEMO_DELAY_SECONDS", "DEMO_WEBHOOKS", "VERCEL")


class LiveServer:
    """A server script of this repo (`app.py` by default) in a child process, on a free port, waited for until it answers."""

    def __init__(self, tmp_path: Path, script="app.py", port_variable="PORT", ready_path="/health", cwd=ROOT,
                 wrapper=(), port=None, **env):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp_path / f"server-{self.port}.log", "w+")
        clean = {k: v for k, v in os.environ.items() if k not in APP_VARIABLES}
        full_env = {**clean, port_variable: str(self.port), "DATABASE_URL": f"sqlite:///{tmp_path}/live.db",
                    "DEMO_DELAY_SECONDS": "1", "SESSION_SECRET": "live-test-secret", "PYTHONDONTWRITEBYTECODE": "1", **env}
        self.process = subprocess.Popen([*wrapper, sys.executable, str(Path(cwd) / script)], cwd=cwd, env=full_env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        try: wait_until(lambda: self.process.poll() is not None or self.answers(ready_path), timeout=40, interval=0.1)
        except AssertionError: pass
        if self.process.poll() is not None or not self.answers(ready_path):
            self.stop()
            raise RuntimeError(f"{script} did not start:\n" + self.output())

    def answers(self, path: str) -> bool:
        try: return httpx2.get(self.url + path, timeout=1).status_code == 200
        except httpx2.HTTPError: return False

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try: self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def live_server(tmp_path):
    server = LiveServer(tmp_path)
    yield server
    server.stop()
