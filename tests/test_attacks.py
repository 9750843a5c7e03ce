"""Issue 13's attack list, re-run as a test suite: kills during queueing, the running cap, idempotency, sign-in and
sessions, open-mode owners, the host allow-list, bad input and a seeded fuzz of every route, headers, Redis down,
the emulator's memory and demo tasks left queued by a restart."""
import asyncio
import base64
import json
import random
import re
import select
import socket
import threading
import uuid
from collections import Counter
from pathlib import Path

import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route

import web
from config import Settings, new_webhook_secret
from emulator import Emulator, MemoryRecords, signed_headers
from middleware import SERVER_SEND, SecurityHeaders
from store import ORPHAN_GRACE_SECONDS, store_for
from tests.conftest import LiveServer, _drop_schema, _pg_schema_url, free_port, require_postgres, wait_for, wait_until
from tests.test_security import TOKENS, bearer, browser, signed_in_browser

DEFAULT_HOSTS = Settings().allowed_hosts
RUNNING = ("queued", "in_progress")
TASK_ID = "task_AAAAAAAAAAAAAAAA"


def error_shape(response) -> dict:
    "The contract's error object of a JSON error answer (and that it is exactly that shape)."
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type"}, body
    return body["error"]


def assert_security_headers(response):
    csp = response.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "img-src 'self' data:" in csp, (response.status_code, csp)
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert response.headers.get("x-content-type-options") == "nosniff", response.status_code


async def task_rows(harness) -> list[tuple]:
    "The tasks table as it is now (what a 4xx must leave unchanged)."
    store = await harness.store()
    rows = await store._fetch("SELECT id, status, response_id, idempotency_key, updated_at FROM tasks ORDER BY id", {})
    return [tuple(row.values()) for row in rows]


async def webhook_rows(harness) -> list[tuple]:
    store = await harness.store()
    return [tuple(row.values()) for row in await store._fetch("SELECT id, done FROM webhook_events ORDER BY id", {})]


# ---------------------------------------------------------------------------------------------------------------------
# 1. kill -9 during queueing: 0 lost, 0 created twice, orphans free the running cap


class SlowCreates:
    """A proxy in front of the standalone emulator that holds each create before the emulator sees it and again after
    it answered, so that kills land in both windows (emulator.py has no create delay of its own). A create whose
    caller died while held before is dropped, as a request that never left the machine; one whose caller died while
    held after is an orphan (created, its id never stored), and the retrieve that adopts it is held too."""

    def __init__(self, upstream: str, before: float = 0.15, after: float = 0.3, adoption: float = 0.3):
        self.upstream, self.before, self.after, self.adoption = upstream, before, after, adoption
        self.holding: Counter = Counter()
        self.orphans: set[str] = set()
        self.port = free_port()
        app = Starlette(routes=[Route("/{path:path}", self.forward, methods=["GET", "POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=10)

    async def _hold(self, phase: str, seconds: float):
        self.holding[phase] += 1
        try: await asyncio.sleep(seconds)
        finally: self.holding[phase] -= 1

    async def forward(self, request: Request) -> Response:
        "Pass a request on and its answer back (streamed: creates stream their events), holding creates and adoptions."
        create = request.method == "POST" and request.url.path == "/v1/responses"
        try: body = await request.body()
        except ClientDisconnect: return Response(status_code=499)
        if create:
            await self._hold("before", self.before)
            if await request.is_disconnected(): return Response(status_code=499)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "idempotency-key")}
        client = httpx2.AsyncClient(timeout=60)
        upstream = await client.send(client.build_request(request.method, self.upstream + request.url.path,
                                                          params=request.query_params, content=body, headers=headers), stream=True)
        chunks, first = upstream.aiter_raw(), b""
        while (found := re.search(rb'"id":\s*"(resp_\w+)"', first)) is None and (chunk := await anext(chunks, None)) is not None:
            first += chunk
        if create:
            await self._hold("after", self.after)
            if found and await request.is_disconnected(): self.orphans.add(found.group(1).decode())
        elif request.url.path.rsplit("/", 1)[-1] in self.orphans: await self._hold("adoption", self.adoption)

        async def relay():
            try:
                yield first
                async for chunk in chunks: yield chunk
            finally:
                await upstream.aclose()
                await client.aclose()
        return StreamingResponse(relay(), upstream.status_code, media_type=upstream.headers.get("content-type"))

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


WARM_APP = """
import os, runpy, sys, time
sys.path.insert(0, os.getcwd())
import uvicorn, web  # the slow imports, done while the previous process still serves
while not os.path.exists(os.environ["GO_FILE"]): time.sleep(0.005)
runpy.run_path("app.py", run_name="__main__")
"""


class KilledApp:
    """An OpenAI-mode app process on one port and one database, SIGKILLed and replaced by a spare process that did its
    imports while the previous one served (a cold start costs seconds)."""

    def __init__(self, tmp_path: Path, port: int, env: dict):
        self.tmp_path, self.port, self.env = tmp_path, port, env
        self.script = tmp_path / "warm_app.py"
        self.script.write_text(WARM_APP)
        self.restarts = 0
        self.server = LiveServer(tmp_path, port=port, **env)
        self.spare = self._spawn()

    def _spawn(self, go: bool = False) -> LiveServer:
        """A spare process, in its own directory (for its log), waiting for its go file: LiveServer returns at once
        while the serving process answers /health. With `go`, a process that starts serving at once."""
        directory = self.tmp_path / f"process-{uuid.uuid4().hex[:8]}"
        directory.mkdir()
        self.go = directory / "go"
        if go: self.go.touch()
        return LiveServer(directory, script=str(self.script), port=self.port, GO_FILE=str(self.go), **self.env)

    def kill(self):
        self.server.process.kill()
        self.server.process.wait(10)

    def restart(self, **env):
        "Kill (if alive) and serve again on the same port and database; `env` changes the next process's settings."
        self.kill()
        if env:  # the spare has the old settings: start another
            self.env = {**self.env, **env}
            self.spare.process.kill()
            self.server = self._spawn(go=True)
        else:
            self.go.touch()
            self.server = self.spare
            wait_until(lambda: self.server.process.poll() is None and self.server.answers("/health"), timeout=30)
        self.restarts += 1
        self.spare = self._spawn()

    def stop(self):
        for server in (self.server, self.spare):
            server.process.kill()
            server.process.wait(10)


KILL_ROUNDS, IN_FLIGHT = 6, 3


class KillRun:
    "The outcome of the kill rounds, with the servers still running."

    def __init__(self, app: KilledApp, emulator: LiveServer, proxy: SlowCreates, answers: dict):
        self.app, self.emulator, self.proxy, self.answers = app, emulator, proxy, answers

    def created(self) -> dict[str, int]:
        "How many responses the emulator created per task id."
        calls = httpx2.get(f"{self.emulator.url}/_emulator/stats").json()["calls"]
        return {key.split(":", 1)[1]: n for key, n in calls.items() if key.startswith("created:")}

    def status(self, task_id: str) -> dict:
        return httpx2.get(f"{self.app.server.url}/api/status/{task_id}", timeout=10).json()

    def tasks(self) -> list[dict]:
        "Every task (all belong to the curl owner), each read through /api/status (which reconciles)."
        listed = httpx2.get(f"{self.app.server.url}/api/tasks?limit=100", timeout=10).json()["tasks"]
        return [self.status(task["id"]) for task in listed]


async def fire_and_kill(app: KilledApp, proxy: SlowCreates, rng: random.Random, target: str, keys: list[str]) -> dict:
    "Queue with `keys` (staggered), SIGKILL the app while they are in flight; each key's status code, None if killed."
    async with httpx2.AsyncClient(base_url=app.server.url, timeout=20) as client:
        async def post(key, delay):
            await asyncio.sleep(delay)
            return await client.post("/api/queue", json={"prompt": f"Kill test {key}"}, headers={"Idempotency-Key": key})
        posts = [asyncio.create_task(post(key, rng.uniform(0, 0.1))) for key in keys]
        if target == "random": await asyncio.sleep(rng.uniform(0, 0.3))
        else: await wait_for(lambda: proxy.holding[target] > 0, timeout=5, interval=0.002)
        app.kill()
        answers = await asyncio.gather(*posts, return_exceptions=True)
    return {key: None if isinstance(answer, Exception) else answer.status_code for key, answer in zip(keys, answers)}


async def retry(app: KilledApp, keys: list[str]) -> dict:
    "What a client does after a dropped connection: send the same request with the same Idempotency-Key again."
    async with httpx2.AsyncClient(base_url=app.server.url, timeout=20) as client:
        answers = await asyncio.gather(*(client.post("/api/queue", json={"prompt": f"Kill test {key}"},
                                                     headers={"Idempotency-Key": key}) for key in keys))
    return {key: answer.status_code for key, answer in zip(keys, answers)}


class KillRunBroken(Exception):
    "The harness failed (not the app): an error, never an expected failure."


def rounds(app: KilledApp, proxy: SlowCreates, rng: random.Random, answers: dict, name: str):
    """Queue and SIGKILL, KILL_ROUNDS times: while creates are held before the emulator, after it, or at a random
    moment; after a kill while held after, kill again while the orphans' webhooks are handled. Killed requests are
    sent again with their Idempotency-Key. `answers`: each key's status code (("retried", code) when it was retried)."""
    for round_ in range(KILL_ROUNDS):
        keys = [f"kill-{name}-{round_}-{i}" for i in range(IN_FLIGHT)]
        target = ("before", "after", "random")[round_ % 3]
        answered = asyncio.run(fire_and_kill(app, proxy, rng, target, keys))
        app.restart()
        if target == "after":  # and again while the orphan's webhook is being handled
            wait_until(lambda: proxy.holding["adoption"] > 0, timeout=20, interval=0.002)
            app.restart()
        killed = [key for key, status in answered.items() if status is None]
        answers.update(answered)
        answers.update({key: ("retried", status) for key, status in asyncio.run(retry(app, killed)).items()})


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def kill_run(request, tmp_path_factory):
    tmp_path, schema = tmp_path_factory.mktemp(f"kill-{request.param}"), None
    database_url = f"sqlite:///{tmp_path}/kill.db"
    if request.param == "postgresql":
        require_postgres()
        schema, database_url = asyncio.run(_pg_schema_url())
    secret, app_port = new_webhook_secret(), free_port()
    emulator = LiveServer(tmp_path, "emulator.py", "EMULATOR_PORT", "/_emulator/stats", OPENAI_WEBHOOK_SECRET=secret,
                          EMULATOR_WEBHOOK_URL=f"http://127.0.0.1:{app_port}/api/webhook", DEMO_DELAY_SECONDS="1")
    proxy = SlowCreates(emulator.url)
    env = {"OPENAI_API_KEY": "sk-kill-test", "OPENAI_BASE_URL": f"http://127.0.0.1:{proxy.port}/v1",
           "OPENAI_WEBHOOK_SECRET": secret, "DATABASE_URL": database_url, "QUEUE_RATE": "100000/minute",
           "MAX_RUNNING_PER_OWNER": "100000", "RECONCILE_SECONDS": "0.5"}
    app = KilledApp(tmp_path, app_port, env)
    rng, answers = random.Random(13), {}
    try:
        try: rounds(app, proxy, rng, answers, request.param)
        except Exception as exc: raise KillRunBroken(f"the kill rounds did not run: {exc!r}") from exc
        killed = [key for key, answer in answers.items() if isinstance(answer, tuple)]
        if app.restarts != KILL_ROUNDS + KILL_ROUNDS // 3 or len(killed) < KILL_ROUNDS or not proxy.orphans:
            raise KillRunBroken(f"the kills did not land in flight: {app.restarts} restarts, {answers}, {proxy.orphans}")
        yield KillRun(app, emulator, proxy, answers)
    finally:
        app.stop()
        proxy.stop()
        emulator.stop()
        if schema: asyncio.run(_drop_schema(schema))


def test_kill_9_during_queueing_loses_no_response_and_creates_none_twice(kill_run):
    retried = [answer[1] for answer in kill_run.answers.values() if isinstance(answer, tuple)]
    assert all(status < 500 for status in retried), kill_run.answers
    created = kill_run.created()
    assert created and "None" not in created, created
    assert {task: n for task, n in created.items() if n != 1} == {}, "responses created twice for one task"

    def lost() -> dict:
        tasks = {task_id: kill_run.status(task_id) for task_id in created}
        return {task_id: (t.get("status"), t.get("response_id")) for task_id, t in tasks.items()
                if t.get("status") != "completed" or not t.get("response_id")}
    try: wait_until(lambda: not lost(), timeout=12, interval=0.25)
    except AssertionError: raise AssertionError(f"{len(lost())} of {len(created)} created responses lost: {lost()}") from None
    for task_id in created:
        response_id = kill_run.status(task_id)["response_id"]
        response = httpx2.get(f"{kill_run.emulator.url}/v1/responses/{response_id}").json()
        assert response["metadata"]["task_id"] == task_id


def test_kill_9_during_queueing_leaves_no_task_stuck(kill_run):
    """Once an interrupted create cannot be running any more (the clock is moved past ORPHAN_GRACE_SECONDS here),
    reading a task that never got a response ends it, saying why; none stays queued."""
    asyncio.run(backdate_orphans(kill_run.app.env["DATABASE_URL"], ORPHAN_GRACE_SECONDS + 1))

    def unsettled() -> list:
        return [(t["id"], t["status"], t["response_id"]) for t in kill_run.tasks() if t["status"] in RUNNING]
    wait_until(lambda: not unsettled(), timeout=5, interval=0.25)
    interrupted = [t for t in kill_run.tasks() if not t["response_id"]]
    assert all(t["status"] == "failed" and "interrupted" in t["error"] for t in interrupted)


def test_kill_9_orphans_do_not_count_toward_the_running_cap(kill_run):
    """A task whose queueing was interrupted counts toward the cap only while its create could still be running
    (ORPHAN_GRACE_SECONDS, past OpenAI's create timeout), never after: the clock is moved past it here."""
    cap = 3
    asyncio.run(fire_and_kill(kill_run.app, kill_run.proxy, random.Random(1), "before", ["one-more-orphan"]))
    asyncio.run(backdate_orphans(kill_run.app.env["DATABASE_URL"], ORPHAN_GRACE_SECONDS + 1))
    kill_run.app.restart(MAX_RUNNING_PER_OWNER=str(cap))
    codes = [httpx2.post(f"{kill_run.app.server.url}/api/queue", json={"prompt": f"after the kills {i}"}, timeout=20).status_code
             for i in range(cap)]
    assert codes == [202] * cap


async def backdate_orphans(database_url: str, seconds: float):
    store = await store_for(database_url).open()
    try: await store._execute("UPDATE tasks SET created_at = created_at - :by WHERE response_id IS NULL", {"by": seconds})
    finally: await store.close()


# ---------------------------------------------------------------------------------------------------------------------
# 2. the running cap: atomic, and per account


async def test_running_cap_is_atomic_for_concurrent_requests(database_url, make_harness):
    "Two app instances on one database, 20 concurrent requests of one owner: exactly the cap gets in."
    apps = [await make_harness(database_url=database_url, max_running_per_owner=3, demo_delay_seconds=60,
                               queue_rate="100000/minute") for _ in range(2)]
    answers = await asyncio.gather(*(apps[i % 2].queue(f"concurrent {i}") for i in range(20)))
    assert sorted(a.status_code for a in answers) == [202] * 3 + [429] * 17
    assert sum(app.emulator.calls["create"] for app in apps) == 3
    assert len((await apps[0].client.get("/api/tasks")).json()["tasks"]) == 3


async def test_sessions_signed_in_with_one_token_share_its_running_cap(make_harness):
    harness = await make_harness(access_tokens=TOKENS, max_running_per_owner=3, demo_delay_seconds=60,
                                 queue_rate="100000/minute")
    first, second = await signed_in_browser(harness), await signed_in_browser(harness)
    codes = [(await client.post("/api/queue", json={"prompt": "shared cap"})).status_code
             for client in (first, first, second, second)]
    assert codes == [202, 202, 202, 429]
    other_token = await signed_in_browser(harness, TOKENS[1])
    assert (await other_token.post("/api/queue", json={"prompt": "another account"})).status_code == 202


async def test_bearer_calls_and_sessions_of_one_token_share_its_running_cap(make_harness):
    harness = await make_harness(access_tokens=TOKENS, max_running_per_owner=3, demo_delay_seconds=60,
                                 queue_rate="100000/minute")
    session = await signed_in_browser(harness)
    codes = [(await session.post("/api/queue", json={"prompt": "by the page"})).status_code for _ in range(2)]
    codes += [(await harness.client.post("/api/queue", json={"prompt": "by curl"}, headers=bearer(TOKENS[0]))).status_code
              for _ in range(2)]
    assert codes == [202, 202, 202, 429]


# ---------------------------------------------------------------------------------------------------------------------
# 3. idempotency keys

ASKED = {"prompt": "Write a report on tides", "model": "gpt-5-mini", "reasoning_effort": "low", "max_output_tokens": 1000}


@pytest.mark.parametrize("change", [{"prompt": "Write a report on waves"}, {"model": "gpt-5"}, {"reasoning_effort": "high"},
                                    {"tools": ["web_search"]}, {"max_output_tokens": 2000}],
                         ids=["prompt", "model", "reasoning_effort", "tools", "max_output_tokens"])
async def test_an_idempotency_key_reused_for_another_request_is_409(harness, change):
    key = {"Idempotency-Key": "report-" + uuid.uuid4().hex}
    first = await harness.client.post("/api/queue", json=ASKED, headers=key)
    same = await harness.client.post("/api/queue", json=ASKED, headers=key)
    assert first.status_code == 202 and same.status_code in (200, 202) and same.json()["id"] == first.json()["id"]
    other = await harness.client.post("/api/queue", json={**ASKED, **change}, headers=key)
    assert other.status_code == 409 and error_shape(other)["type"] == "idempotency_conflict"
    in_form = await harness.client.post("/api/queue", data={**ASKED, **change}, headers=key)
    assert in_form.status_code == 409
    assert harness.emulator.calls["create"] == 1
    assert [t["id"] for t in (await harness.client.get("/api/tasks")).json()["tasks"]] == [first.json()["id"]]


# ---------------------------------------------------------------------------------------------------------------------
# 4. sign-in limits


@pytest.mark.parametrize("wrong_by", ["form", "bearer"])
async def test_after_the_signin_limit_even_the_right_token_gets_429(make_harness, wrong_by):
    harness = await make_harness(access_tokens=TOKENS, signin_rate="5/minute")
    client = browser(harness)
    for i in range(5):
        if wrong_by == "form": wrong = await client.post("/signin", data={"token": f"guess-{i}"})
        else: wrong = await harness.client.get("/api/tasks", headers=bearer(f"guess-{i}"))
        assert wrong.status_code == 401
    right_form = await browser(harness).post("/signin", data={"token": TOKENS[0]})
    assert right_form.status_code == 429 and "set-cookie" not in right_form.headers
    assert int(right_form.headers["retry-after"]) > 0
    right_bearer = await harness.client.post("/api/queue", json={"prompt": "hi"}, headers=bearer(TOKENS[0]))
    assert right_bearer.status_code == 429 and error_shape(right_bearer)["type"] == "rate_limited"
    assert harness.emulator.calls["create"] == 0


# ---------------------------------------------------------------------------------------------------------------------
# 5. sessions


async def test_a_signed_out_cookie_replayed_gets_no_access(make_harness):
    harness = await make_harness(access_tokens=TOKENS)
    client = await signed_in_browser(harness)
    assert (await client.get("/api/tasks")).status_code == 200
    cookie = client.cookies["session"]
    assert (await client.post("/signout")).status_code == 303
    replay = browser(harness)
    replay.cookies.set("session", cookie)
    page = await replay.get("/")
    assert page.status_code == 303 and page.headers["location"] == "/signin"
    assert (await replay.get("/api/tasks")).status_code == 401
    queued = await replay.post("/api/queue", json={"prompt": "with a dead session"})
    assert queued.status_code == 401 and harness.emulator.calls["create"] == 0


@pytest.mark.parametrize("overrides,max_age", [({}, 604800), ({"session_max_age": 3600}, 3600)])
async def test_the_session_cookie_lasts_session_max_age(make_harness, overrides, max_age):
    gated = await make_harness(access_tokens=TOKENS, **overrides)
    cookie = (await browser(gated).post("/signin", data={"token": TOKENS[0]})).headers["set-cookie"]
    assert re.search(r"max-age=(\d+)", cookie, re.IGNORECASE).group(1) == str(max_age), cookie
    open_app = await make_harness(database_url=gated.services.settings.database_url + ".open", **overrides)
    cookie = (await browser(open_app).get("/")).headers["set-cookie"]
    assert re.search(r"max-age=(\d+)", cookie, re.IGNORECASE).group(1) == str(max_age), cookie


async def test_a_token_in_the_query_string_never_signs_in(make_harness):
    harness = await make_harness(access_tokens=TOKENS)
    client = browser(harness)
    for name in ("token", "access_token"):
        assert (await client.get(f"/?{name}={TOKENS[0]}")).status_code == 303
        signin = await client.post(f"/signin?{name}={TOKENS[0]}", data={})
        assert signin.status_code == 401 and "set-cookie" not in signin.headers
        assert (await client.get(f"/api/tasks?{name}={TOKENS[0]}")).status_code == 401
    assert (await client.get("/")).status_code == 303


# ---------------------------------------------------------------------------------------------------------------------
# 6. open mode: cookie-less htmx requests share one owner


async def test_cookieless_htmx_requests_share_one_owner_and_its_rate(make_harness):
    harness = await make_harness(queue_rate="10/minute", max_running_per_owner=100)
    codes = [(await browser(harness).post("/api/queue", data={"prompt": f"p{i}"}, headers={"HX-Request": "true"})).status_code
             for i in range(11)]
    assert codes == [202] * 10 + [429]
    assert (await harness.queue("by curl")).status_code == 429
    assert len((await harness.client.get("/api/tasks")).json()["tasks"]) == 10


# ---------------------------------------------------------------------------------------------------------------------
# 7. the host allow-list


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example",
                                  "testserver.evil.example:80", "[::2]:8000"])
async def test_another_host_gets_400_and_nothing_is_queued(make_harness, host):
    harness = await make_harness(allowed_hosts=DEFAULT_HOSTS + ("testserver",))
    for method, path in (("POST", "/api/queue"), ("GET", "/"), ("GET", "/api/tasks"), ("GET", "/health")):
        response = await harness.client.request(method, path, json={"prompt": "rebound"}, headers={"Host": host})
        assert response.status_code == 400 and error_shape(response)["type"] == "host_not_allowed", (method, path)
        assert_security_headers(response)
    assert harness.emulator.calls["create"] == 0 and await task_rows(harness) == []


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "127.0.0.1", "localhost", "localhost:8000", "LocalHost:9999",
                                  "[::1]:8000", "[::1]"])
async def test_the_local_hosts_with_any_port_are_answered(make_harness, host):
    harness = await make_harness(allowed_hosts=DEFAULT_HOSTS)
    response = await harness.client.post("/api/queue", json={"prompt": "local"}, headers={"Host": host})
    assert response.status_code == 202, response.text


# ---------------------------------------------------------------------------------------------------------------------
# 8. bad input -> 4xx, never 5xx, store intact


@pytest.fixture
async def roomy(make_harness):
    """An app whose body limit lets 100,000-deep JSON reach the parser, and whose one task stays as queued (a long demo,
    no stream recorded), so that any change to the store is one a bad request made."""
    harness = await make_harness(max_prompt_chars=100_000, access_tokens=TOKENS, queue_rate="100000/minute",
                                 signin_rate="100000/minute", demo_delay_seconds=600)
    return harness.without_relay()


def cursor(raw: str) -> str: return base64.urlsafe_b64encode(raw.encode()).decode()


BAD_CURSORS = [cursor(f'[1e999, "{TASK_ID}"]'), cursor(f'[-1e999, "{TASK_ID}"]'), cursor(f'[NaN, "{TASK_ID}"]'),
               cursor(f'[99999999999999999999999, "{TASK_ID}"]'), cursor(f'[{"9" * 5000}, "{TASK_ID}"]'),
               cursor(f'["1700000000", "{TASK_ID}"]'), cursor('[1700000000, 5]'), cursor(f'[true, "{TASK_ID}"]'),
               cursor('[1700000000, "\\ud800"]'), cursor('{"a": 1}'), cursor("[1]"), cursor(f'[1, "{TASK_ID}", 3]'),
               cursor("null"), cursor("[" * 10_000), base64.urlsafe_b64encode(b"\xff\xfe[1]").decode(), "!!!", "%ED%A0%80"]


async def test_malformed_input_gets_4xx_and_changes_nothing(roomy):
    auth = bearer(TOKENS[0])
    queued = await roomy.client.post("/api/queue", json={"prompt": "kept"}, headers=auth)
    assert queued.status_code == 202
    before = await task_rows(roomy)
    nested = b"[" * 100_000 + b"]" * 100_000
    bodies = [b'{"prompt": "\\ud800"}', b'{"prompt": "ok", "model": "\\udfff"}', b'{"prompt": "ok", "idempotency_key": "\\ud800"}',
              b'{"prompt": "ok", "reasoning_effort": "\\ud800"}', b'{"prompt": "ok", "tools": ["\\ud800"]}',
              b'{"prompt": "a\\u0000b"}', nested, b'{"prompt": ' + nested + b"}", b'{"prompt": {"a": ' * 50_000, b"\xff\xfe",
              b'{"prompt": 1e999}', b'{"prompt": "ok", "max_output_tokens": 1e999}',
              b'{"prompt": "ok", "max_output_tokens": ' + b"9" * 5000 + b"}", b'"just a string"', b"[]", b"null"]
    for body in bodies:
        response = await roomy.client.post("/api/queue", content=body, headers={**auth, "Content-Type": "application/json"})
        assert 400 <= response.status_code < 500, (body[:60], response.status_code, response.text[:200])
        error_shape(response)
    for limit in ("²", "٣", "9" * 5000, "-1", "0", "101", "1e3", " 5", "5 ", ""):
        response = await roomy.client.get("/api/tasks", params={"limit": limit}, headers=auth)
        assert response.status_code == 400 and error_shape(response)["type"] == "invalid_limit", (limit, response.text[:200])
    for bad in BAD_CURSORS:
        response = await roomy.client.get(f"/api/tasks?cursor={bad}", headers=auth)
        assert response.status_code == 400 and error_shape(response)["type"] == "invalid_cursor", (bad[:40], response.text[:200])
    for path in ("/", "/api/tasks", f"/api/status/{queued.json()['id']}", "/health", "/signin"):
        response = await roomy.client.request("GET", path, content=b'{"prompt": "x"' + b"[" * 1000, headers={
            **auth, "Content-Type": "application/json"})
        assert response.status_code < 500, (path, response.status_code)
    for files in ({"token": ("token.txt", TOKENS[0].encode(), "text/plain")}, {"token": ("x", b"\xff" * 100, "image/png")}):
        signin = await browser(roomy).post("/signin", files=files)
        assert signin.status_code in (400, 401) and "set-cookie" not in signin.headers
    signin = await browser(roomy).post("/signin", json={"token": TOKENS[0]})
    assert 400 <= signin.status_code < 500 and "set-cookie" not in signin.headers
    empty = await roomy.client.post("/api/queue", headers=auth)
    assert empty.status_code == 400 and error_shape(empty)["type"] == "empty_prompt", empty.text
    assert await task_rows(roomy) == before and roomy.emulator.calls["create"] == 1


PATH_VALUES = ["", "x", TASK_ID, "task_" + "x" * 40, "..", "../../etc/passwd", "%2e%2e%2f", "%00", "%ED%A0%80", "%ZZ", "é" * 30,
               "🙂", "a" * 3000, "task_%00AAAAAAAAAAAAAA", "<script>", "' OR 1=1 --", "null", "1e999", "%0d%0aSet-Cookie:x=1"]
QUERY_VALUES = ["", "1", "20", "100", "101", "²", "-1", "9" * 5000, "%ZZ", "%ED%A0%80", "a&b", "[]", "null", "true",
                base64.urlsafe_b64encode(b'[1e999, "x"]').decode(), base64.urlsafe_b64encode(b'[1700000000.5, "' + TASK_ID.encode()
                                                                                               + b'"]').decode()]
QUERY_NAMES = ["limit", "cursor", "after", "token", "access_token", "prompt", "id", "x", ""]
CONTENT_TYPES = ["application/json", "application/json; charset=utf-16", "application/x-www-form-urlencoded",
                 "multipart/form-data", "multipart/form-data; boundary=zzz", "text/plain", "text/event-stream", "*/*",
                 "application/json\x7f", "", None]
FIELDS = ["prompt", "model", "reasoning_effort", "tools", "max_output_tokens", "max_tool_calls", "idempotency_key", "token",
          "x", ""]


def fuzz_value(rng: random.Random):
    return rng.choice([None, True, 0, -1, 10 ** 30, 1.5, "", " ", "Write about tides", "gpt-5-mini", "gpt-5", "o3-deep-research",
                       "low", "high", "xhigh", "web_search", "file_search", "mcp", "\x00", "\ud800", "🙂" * 50, "x" * 3000,
                       TOKENS[0], [], ["web_search"], ["web_search", "web_search"], [1, 2], {"a": 1}, [[[[]]]], 16, 1000000])


def fuzz_body(rng: random.Random, content_type: str | None) -> bytes:
    kind = rng.randrange(8)
    fields = {rng.choice(FIELDS): fuzz_value(rng) for _ in range(rng.randrange(5))}
    if rng.random() < 0.5: fields["prompt"] = rng.choice(["Write about tides", "🙂", "a" * 500, "[demo:failed] x"])
    if kind == 0: return b""
    if kind == 1: return rng.randbytes(rng.randrange(1, 400))
    if kind == 2: return b"[" * rng.choice([10, 1000, 5000]) + b"]" * rng.randrange(2)
    if kind == 3 or (content_type or "").startswith("application/json"):
        return json.dumps(fields).encode("utf-8", "surrogatepass")
    if kind == 4:
        return "&".join(f"{k}={v}" for k, v in fields.items() if isinstance(v, str)).encode("utf-8", "surrogatepass")
    if kind == 5:
        parts = [f'--zzz\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()
                 if isinstance(v, str)]
        return ("".join(parts) + ("--zzz--\r\n" if rng.random() < 0.7 else "")).encode("utf-8", "surrogatepass")
    if kind == 6: return b'--zzz\r\nContent-Disposition: form-data; name="token"; filename="t"\r\n\r\n' + rng.randbytes(50) + b"\r\n--zzz--\r\n"
    return b"prompt=%ED%A0%80&model=%ZZ&tools=web_search&tools=mcp"


def route_templates() -> list[tuple[str, list[str]]]:
    "Every route of web.ROUTES (path template, its methods), and the static mount."
    routes = []
    for route in web.ROUTES:
        if isinstance(route, Route): routes.append((route.path, sorted(route.methods or ["GET"])))
        elif isinstance(route, Mount): routes.append((route.path + "/{path}", ["GET", "HEAD"]))
    return routes


def fuzz_request(rng: random.Random, routes, known_ids: list[str]) -> tuple[str, str, dict, bytes]:
    template, methods = rng.choice(routes)
    values = PATH_VALUES + known_ids[-5:] + ["app.css", "htmx.min.js", "../web.py", "%2e%2e/web.py"]

    def value(match):
        if "events" in template and match.group(0) != "": return rng.choice(PATH_VALUES)  # never an endless stream
        return rng.choice(values)
    path = re.sub(r"\{[^}]+\}", value, template) if rng.random() < 0.95 else "/" + rng.choice(PATH_VALUES)
    if rng.random() < 0.7:
        path += "?" + "&".join(f"{rng.choice(QUERY_NAMES)}={rng.choice(QUERY_VALUES)}" for _ in range(rng.randrange(1, 4)))
    method = rng.choice(methods) if rng.random() < 0.85 else rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    content_type = rng.choice(CONTENT_TYPES)
    body = fuzz_body(rng, content_type) if method not in ("GET", "HEAD") or rng.random() < 0.2 else b""
    headers = {"Content-Type": content_type} if content_type is not None else {}
    for name, choices in (("Authorization", [f"Bearer {TOKENS[0]}", f"Bearer {TOKENS[1]}", "Bearer wrong", "Bearer ", "Basic eDp5"]),
                          ("HX-Request", ["true", ""]), ("Idempotency-Key", ["k1", "k" * 300, "", "é".encode()]),
                          ("Origin", ["http://testserver", "http://evil.example", "null"]),
                          ("Sec-Fetch-Site", ["same-origin", "cross-site", "none"]), ("Last-Event-ID", ["3", "-1", "x" * 100]),
                          ("Cookie", ["session=garbage", "session=" + "a" * 4000, "session=eyJ9.x.y"]),
                          ("X-Forwarded-For", ["1.2.3.4", "garbage"]), ("Range", ["bytes=0-1", "bytes=9-1"])):
        if rng.random() < 0.25: headers[name] = rng.choice(choices)
    return method, path, headers, body


async def test_seeded_fuzz_of_every_route_gets_no_5xx_and_4xx_change_nothing(make_harness, tmp_path):
    "3,000+ requests over every route of web.ROUTES, to an open and a gated app; signed webhooks included."
    overrides = {"queue_rate": "100000/minute", "signin_rate": "100000/minute", "max_running_per_owner": 100000,
                 "demo_webhooks": False, "demo_delay_seconds": 3600}
    apps = [await make_harness(**overrides), await make_harness(access_tokens=TOKENS, database_url=f"sqlite:///{tmp_path}/gated.db",
                                                                 **overrides)]
    routes = route_templates()
    assert {"/api/queue", "/api/status/{task_id}", "/api/tasks", "/api/webhook", "/signin"} <= {path for path, _ in routes}
    rng, statuses, known_ids = random.Random(1313), Counter(), []
    for _ in range(3200):
        app = rng.choice(apps)
        method, path, headers, body = fuzz_request(rng, routes, known_ids)
        if path.startswith("/api/webhook") and rng.random() < 0.3:
            event = {"object": "event", "id": "evt_x", "type": rng.choice(["response.completed", "response.failed", "x", ""]),
                     "created_at": rng.choice([0, 10 ** 12, None]), "data": rng.choice([{"id": "resp_x"}, {}, None, [], "x"])}
            body = json.dumps(event).encode()
            headers = {**headers, **signed_headers(app.secret, body, timestamp=rng.choice([None, 0]))}
        before = await task_rows(app), await webhook_rows(app)
        try: response = await asyncio.wait_for(app.client.request(method, path, content=body, headers=headers), 10)
        except Exception as exc: raise AssertionError((method, path, headers, body[:100], repr(exc))) from exc
        statuses[response.status_code] += 1
        assert response.status_code < 500, (method, path, headers, body[:100], response.status_code, response.text[:300])
        assert_security_headers(response)
        if response.status_code >= 400:
            assert (await task_rows(app), await webhook_rows(app)) == before, (method, path, response.status_code)
        if response.status_code == 202: known_ids.append(response.json()["id"] if "json" in response.headers["content-type"]
                                                         else re.search(r"task_[\w-]{16}", response.text).group(0))
    assert sum(statuses.values()) >= 3000 and {200, 202, 303, 400, 401, 404, 405, 415}.issubset(statuses), statuses


# ---------------------------------------------------------------------------------------------------------------------
# 9. header limits and security headers on every answer


async def test_headers_over_64_kb_get_431(harness):
    for headers in ({"X-Big": "a" * 70_000}, {f"X-Many-{i}": "a" * 1000 for i in range(70)}):
        response = await harness.client.post("/api/queue", json={"prompt": "hi"}, headers=headers)
        assert response.status_code == 431 and error_shape(response)["type"] == "headers_too_large"
        assert_security_headers(response)
    assert harness.emulator.calls["create"] == 0


async def test_security_headers_on_every_answer_errors_and_500_included(harness, monkeypatch):
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=harness.app, raise_app_exceptions=False),
                                base_url="http://testserver")
    answers = {404: await client.get("/no/such/page"), 405: await client.delete("/api/queue"),
               413: await client.post("/api/queue", content=b"x" * (harness.services.settings.max_body_bytes + 1),
                                      headers={"Content-Type": "application/json"}),
               431: await client.get("/", headers={"X-Big": "a" * 70_000}),
               400: await client.get("/", headers={"Host": "evil.example"}),
               200: await client.get("/"), 202: await client.post("/api/queue", json={"prompt": "hi"})}

    async def broken(*args, **kwargs): raise RuntimeError("forced")
    monkeypatch.setattr(harness.services.store, "list_for_owner", broken)
    answers[500] = await client.get("/api/tasks")
    page_500 = await client.get("/")
    await client.aclose()
    assert {status: answer.status_code for status, answer in answers.items()} == {status: status for status in answers}
    assert page_500.status_code == 500
    for answer in (*answers.values(), page_500): assert_security_headers(answer)
    assert error_shape(answers[500])["type"] == "server_error" and "forced" not in answers[500].text


async def test_an_event_stream_has_the_security_headers_though_its_chunks_go_past_the_middleware(make_harness):
    harness = await make_harness(demo_delay_seconds=0.5)
    task = (await harness.queue("Watched")).json()
    async with harness.client.stream("GET", f"/api/events/{task['id']}", params={"format": "html"}) as response:
        assert_security_headers(response)
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    assert body.startswith(b"retry: ") and b"event: status" in body and b"event: done" in body


async def test_the_scope_keeps_no_server_send_once_answered():
    "The server's send holds the scope (uvicorn's): left in it, each request would leave a cycle for the collector."
    seen, scope = {}, {"type": "http", "scheme": "http"}

    async def app(scope, receive, send): seen["during"] = scope.get(SERVER_SEND)
    await SecurityHeaders(app)(scope, None, print)
    assert seen["during"] is print and SERVER_SEND not in scope


def headers_sent_before_refusal(url: str, limit: int = 16 * 1024 * 1024) -> int:
    "Send one request's headers in 64 KB lines to a real server; how many bytes it took in before it answered or hung up."
    host, port = url.removeprefix("http://").split(":")
    sent, line = 0, b"X-Pad: " + b"a" * 65_000 + b"\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n".encode())
        try:
            while sent < limit:
                if select.select([sock], [], [], 0.05)[0]: return sent
                sock.sendall(line)
                sent += len(line)
            sock.sendall(b"\r\n")
        except OSError: return sent
    return sent


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    "A demo-mode app process (its emulator inside), for the attacks that need a real server."
    servers = [LiveServer(tmp_path_factory.mktemp("demo"), DEMO_DELAY_SECONDS="2", RECONCILE_SECONDS="1")]
    yield servers
    for server in servers: server.stop()


def test_a_real_server_stops_reading_headers_past_1_mb(demo_server):
    "`python app.py` bounds what one request's headers may cost (the app itself answers 431 from 64 KB)."
    assert headers_sent_before_refusal(demo_server[0].url) <= 1024 * 1024 + 2 * 65_000


# ---------------------------------------------------------------------------------------------------------------------
# 10. Redis down, the emulator's memory, demo tasks left queued by a restart


async def test_redis_down_is_503_naming_it_never_500(make_harness):
    harness = await make_harness(rate_limit_storage_url=f"redis://127.0.0.1:{free_port()}", access_tokens=TOKENS)
    health = await harness.client.get("/health")
    assert health.status_code == 503 and "rate_limit_storage" in health.json()["unavailable"]
    queued = await harness.client.post("/api/queue", json={"prompt": "hi"}, headers=bearer(TOKENS[0]))
    assert queued.status_code == 503 and error_shape(queued)["type"] == "limiter_unavailable"
    assert_security_headers(queued)
    session = browser(harness)
    signin = await session.post("/signin", data={"token": TOKENS[0]})
    assert signin.status_code == 503 and "set-cookie" not in signin.headers
    page_queue = await harness.client.post("/api/queue", data={"prompt": "hi"}, headers={**bearer(TOKENS[0]), "HX-Request": "true"})
    assert page_queue.status_code == 503
    assert harness.emulator.calls["create"] == 0 and await task_rows(harness) == []


async def test_the_demo_emulators_memory_is_bounded():
    emulator = Emulator(None, new_webhook_secret(), delay=0, deliver_webhooks=False, records=MemoryRecords(limit=3))
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=emulator.app), base_url="http://emulator") as client:
        ids = [(await client.post("/v1/responses", json={"model": "gpt-5-mini", "input": f"p{i}", "background": True})).json()["id"]
               for i in range(5)]
        assert len(emulator.records) == 3
        assert [(await client.get(f"/v1/responses/{rid}")).status_code for rid in ids] == [404, 404, 200, 200, 200]
    await emulator.stop()
    assert Emulator(None, new_webhook_secret()).records.limit <= 100_000


def test_a_demo_task_left_queued_by_a_kill_finishes_after_a_restart(demo_server):
    server = demo_server[0]
    task = httpx2.post(f"{server.url}/api/queue", json={"prompt": "left behind"}, timeout=10).json()
    assert task["status"] == "queued"
    server.process.kill()
    server.process.wait(10)
    tmp_path = Path(server.log.name).parent
    demo_server.append(restarted := LiveServer(tmp_path, port=server.port, DEMO_DELAY_SECONDS="2", RECONCILE_SECONDS="1"))
    status = lambda: httpx2.get(f"{restarted.url}/api/status/{task['id']}", timeout=10).json()
    assert wait_until(lambda: status()["status"] == "completed", timeout=10, interval=0.2)
    assert status()["output_text"].startswith("[Demo mode]")
