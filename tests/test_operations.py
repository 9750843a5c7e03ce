"""What an operator relies on: metrics a Prometheus client parses, JSON logs without secrets, /health naming what is
broken (with no 500 meanwhile), a Vercel start that fails fast when misconfigured, and demo mode across instances."""
import asyncio
import json
import logging
import shutil
import socket
import subprocess
import time

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from telemetry import JsonLines
from tests.conftest import LiveServer, free_port, require, wait_until

TOKEN = "metrics-token-0123456789"


def samples(text: str) -> dict:
    "Every sample of a Prometheus text page, by (name, labels), as a real Prometheus client parses it."
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_count_requests_tasks_webhooks_and_openai_calls(make_harness):
    harness = await make_harness(access_tokens=(TOKEN,))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    task = (await harness.client.post("/api/queue", json={"prompt": "count me", "model": "gpt-5"}, headers=auth)).json()
    await harness.wait_status(task["id"], "completed")
    await harness.emulator.wait_idle()
    assert (await harness.client.get("/metrics")).status_code == 401
    page = await harness.client.get("/metrics", headers=auth)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    found = samples(page.text)
    assert found[("app_requests_total", (("route", "/api/queue"), ("status", "202")))] >= 1
    assert found[("app_tasks_total", (("model", "gpt-5"), ("status", "queued")))] >= 1
    assert found[("app_tasks_total", (("model", "gpt-5"), ("status", "completed")))] >= 1
    assert found[("app_openai_calls_total", (("operation", "create"),))] >= 1
    assert any(name == "app_webhook_events_total" and dict(labels)["type"] == "response.completed" for name, labels in found)
    assert any(name == "app_request_seconds_bucket" and dict(labels)["route"] == "/api/queue" for name, labels in found)
    assert ("app_progress_streams_open", ()) in found and any(name == "app_relays_total" for name, _ in found)
    assert TOKEN not in page.text and harness.secret not in page.text


async def test_logs_are_json_lines_without_secrets_or_prompts(make_harness, caplog):
    harness = await make_harness(openai_api_key="", access_tokens=(TOKEN,))
    with caplog.at_level(logging.INFO):
        task = (await harness.client.post("/api/queue", json={"prompt": "a private prompt"},
                                          headers={"Authorization": f"Bearer {TOKEN}"})).json()
        await harness.wait_status(task["id"], "completed")
        await harness.emulator.wait_idle()
    lines = [json.loads(JsonLines().format(record)) for record in caplog.records]
    transitions = [line for line in lines if line["message"] == "task" and line.get("task_id") == task["id"]]
    assert [t["status"] for t in transitions][0] == "queued" and transitions[-1]["status"] == "completed"
    assert transitions[-1]["response_id"] and transitions[-1]["model"] == "gpt-5-mini"
    assert any(line["message"] == "webhook" and line["outcome"] in ("updated", "already final") for line in lines)
    text = "\n".join(map(json.dumps, lines))
    assert "a private prompt" not in text and TOKEN not in text and harness.secret not in text


async def test_prompts_are_logged_only_with_log_prompts_on(make_harness, caplog):
    harness = await make_harness(log_prompts=True)
    with caplog.at_level(logging.INFO): await harness.queue("say it out loud")
    assert any(getattr(r, "fields", {}).get("prompt") == "say it out loud" for r in caplog.records)


async def test_requests_are_logged_one_line_each_by_route(make_harness, caplog):
    from web import App  # the middleware that logs is outermost, around the app that tests call
    harness = await make_harness()
    assert isinstance(harness.app, App)
    with caplog.at_level(logging.INFO): await harness.client.get("/api/status/task_AAAAAAAAAAAAAAAA")
    requests = [r.fields for r in caplog.records if r.getMessage() == "request"]
    assert requests == [{"method": "GET", "route": "/api/status/{task_id}", "status": 404, "ms": requests[0]["ms"]}]


class Forwarder:
    "A TCP forwarder to a real server, which the test can cut: for the app, the server goes away."

    def __init__(self, port: int):
        self.target, self.server, self.writers = port, None, set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _pipe(self, reader, writer):
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers |= {writer, upstream_writer}

        async def copy(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            finally: sink.close()
        await asyncio.gather(copy(reader, upstream_writer), copy(upstream_reader, writer), return_exceptions=True)

    def cut(self):
        self.server.close()
        for writer in self.writers: writer.transport.abort()


def redis_server(port: int) -> subprocess.Popen:
    require("redis-server", bool(shutil.which("redis-server")), "apt-get install -y redis-server")
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, timeout=10)
    return process


async def test_health_names_redis_when_it_stops_and_nothing_answers_500(make_harness):
    port = free_port()
    redis = redis_server(port)
    try:
        harness = await make_harness(rate_limit_storage_url=f"redis://127.0.0.1:{port}", access_tokens=(TOKEN,))
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await harness.client.get("/health")).status_code == 200
        assert (await harness.client.post("/api/queue", json={"prompt": "before"}, headers=auth)).status_code == 202
    finally:
        redis.terminate()
        redis.wait(10)
    health = await harness.client.get("/health")
    assert health.status_code == 503 and health.json()["unavailable"] == ["rate_limit_storage"]
    queued = await harness.client.post("/api/queue", json={"prompt": "after"}, headers=auth)
    assert queued.status_code == 503 and queued.json()["error"]["type"] == "limiter_unavailable"


@pytest.mark.postgres
async def test_health_names_the_database_when_it_goes_away_and_answers_fast(make_harness, postgres_url):
    database_url = postgres_url
    forwarder = Forwarder(5432)
    port = await forwarder.start()
    harness = await make_harness(database_url=database_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}"))
    assert (await harness.client.get("/health")).status_code == 200
    forwarder.cut()
    started = time.monotonic()
    health = await harness.client.get("/health")
    queued = await harness.queue("while the database is away")
    assert health.status_code == 503 and health.json()["unavailable"] == ["store"]
    assert queued.status_code == 503 and queued.json()["error"]["type"] == "store_unavailable"
    assert time.monotonic() - started < 8, "an unreachable database answers within seconds"


@pytest.mark.postgres
def test_demo_mode_on_vercel_works_across_instances_sharing_only_postgresql(tmp_path, postgres_url):
    "Two Vercel-like demo instances: a task queued on one finishes, with its progress, when read on the other."
    env = {"VERCEL": "1", "SESSION_SECRET": "vercel-demo-secret", "DATABASE_URL": postgres_url, "DEMO_DELAY_SECONDS": "2",
           "RECONCILE_SECONDS": "0.5", "ALLOWED_HOSTS": "127.0.0.1"}
    a, b = LiveServer(tmp_path, **env), LiveServer(tmp_path, **env)
    try:
        task = httpx2.post(f"{a.url}/api/queue", json={"prompt": "Across instances", "model": "o4-mini-deep-research"}).json()
        with httpx2.stream("GET", f"{b.url}/api/events/{task['id']}", timeout=30) as events:
            lines = [line for line in events.iter_lines()]
        final = httpx2.get(f"{b.url}/api/status/{task['id']}").json()
    finally:
        a.stop()
        b.stop()
    assert "event: output_text.delta" in lines and "event: done" in lines
    assert final["status"] == "completed" and final["sources"]
