import asyncio
import json
import os
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

from app import create_app  # noqa: E402
from config import Settings  # noqa: E402
from config import new_webhook_secret  # noqa: E402
from emulator import Emulator, signed_headers  # noqa: E402


async def wait_for(condition, timeout: float = 10.0, interval: float = 0.05):
    "Await `condition()` (sync or async) until it is truthy; fail after `timeout` seconds."
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value): value = await value
        if value: return value
        if time.monotonic() > deadline: raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path}/tasks.db", demo_delay_seconds=0.4, reconcile_seconds=3600,
                    session_secret="test-session-secret", max_prompt_chars=2000)


class AppHarness:
    """An app with the real SDK, the emulator and a real SQLite file, and an HTTP client bound to it."""

    def __init__(self, app, emulator=None):
        self.app = app
        self.client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://testserver")
        self.emulator = emulator or app.state.gateway.emulator
        self.secret = app.state.gateway.webhook_secret

    async def store(self): return (await self.app.state.service()).store

    async def close(self):
        await self.client.aclose()
        await self.app.state.shutdown()

    async def queue(self, prompt="Write a long report on tides", **kw):
        return await self.client.post("/api/queue", json={"prompt": prompt, **kw})

    async def status(self, task_id, **kw): return await self.client.get(f"/api/status/{task_id}", **kw)

    async def wait_status(self, task_id, wanted="completed", timeout=10):
        async def reached():
            task = await (await self.store()).get(task_id)
            return task if task["status"] == wanted else None
        return await wait_for(reached, timeout)

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
        http_client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=emulator.app))
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


class LiveServer:
    """`python app.py` in a child process, on a free port."""

    def __init__(self, tmp_path: Path, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp_path / f"server-{self.port}.log", "w+")
        full_env = {**os.environ, "PORT": str(self.port), "DATABASE_URL": f"sqlite:///{tmp_path}/live.db",
                    "DEMO_DELAY_SECONDS": "1", "SESSION_SECRET": "live-test-secret", **env}
        if "OPENAI_API_KEY" not in env: full_env.pop("OPENAI_API_KEY", None)
        self.process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full_env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx2.get(self.url + "/health", timeout=1).status_code == 200: return
            except httpx2.HTTPError: time.sleep(0.1)
        self.stop()
        raise RuntimeError("the app did not start:\n" + self.output())

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def live_server(tmp_path):
    server = LiveServer(tmp_path)
    yield server
    server.stop()
