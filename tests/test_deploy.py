"""Deployments: several processes on one database, and Vercel's read-only file system."""
import concurrent.futures
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import pytest

from config import new_webhook_secret
from emulator import signed_headers
from tests.conftest import ROOT, LiveServer, free_port, require, wait_until


@pytest.fixture
def servers():
    started = []
    yield started
    for server in started: server.stop()


def test_two_processes_on_one_database_stay_consistent(tmp_path, database_url, servers):
    """Queued through A (which records its stream), its webhook delivered to B, read from both: one consistent state,
    and at most one retrieve (none when A's stream recorded the end before the webhook came)."""
    secret, a_port, b_port, emulator_port = new_webhook_secret(), free_port(), free_port(), free_port()
    servers.append(LiveServer(tmp_path, "emulator.py", "EMULATOR_PORT", "/_emulator/stats", port=emulator_port,
                              EMULATOR_WEBHOOK_URL=f"http://127.0.0.1:{b_port}/api/webhook",
                              OPENAI_WEBHOOK_SECRET=secret, DEMO_DELAY_SECONDS="3"))
    app_env = {"OPENAI_API_KEY": "sk-multi-process-test", "OPENAI_WEBHOOK_SECRET": secret, "DATABASE_URL": database_url,
               "OPENAI_BASE_URL": f"http://127.0.0.1:{emulator_port}/v1", "RECONCILE_SECONDS": "3600",
               "APP_ACCESS_TOKENS": "multi-token"}
    a, b = LiveServer(tmp_path, port=a_port, **app_env), LiveServer(tmp_path, port=b_port, **app_env)
    servers += [a, b]
    auth = {"Authorization": "Bearer multi-token"}
    task = httpx2.post(f"{a.url}/api/queue", json={"prompt": "two processes"}, headers=auth).json()
    status = lambda server: httpx2.get(f"{server.url}/api/status/{task['id']}", headers=auth).json()
    seen_by_b = status(b)  # A's relay may already have recorded in_progress: either is a task not yet ended
    assert seen_by_b["status"] in ("queued", "in_progress") and seen_by_b["response_id"] == task["response_id"]
    wait_until(lambda: status(b)["status"] == "completed")
    assert status(a) == status(b) and status(a)["output_text"].startswith("[Demo mode]")
    assert httpx2.get(f"{a.url}/api/tasks", headers=auth).json()["tasks"][0]["id"] == task["id"]
    stats = httpx2.get(f"http://127.0.0.1:{emulator_port}/_emulator/stats").json()
    assert stats["calls"].get("retrieve", 0) <= 1 and stats["deliveries"] == 1


def test_concurrent_webhooks_to_two_processes_have_one_effect(tmp_path, database_url, servers):
    secret, emulator_port = new_webhook_secret(), free_port()
    servers.append(LiveServer(tmp_path, "emulator.py", "EMULATOR_PORT", "/_emulator/stats", port=emulator_port,
                              EMULATOR_WEBHOOK_URL="http://127.0.0.1:9/nowhere", DEMO_WEBHOOKS="off",
                              OPENAI_WEBHOOK_SECRET=secret, DEMO_DELAY_SECONDS="60"))
    app_env = {"OPENAI_API_KEY": "sk-multi-process-test", "OPENAI_WEBHOOK_SECRET": secret, "DATABASE_URL": database_url,
               "OPENAI_BASE_URL": f"http://127.0.0.1:{emulator_port}/v1", "RECONCILE_SECONDS": "3600"}
    a, b = LiveServer(tmp_path, **app_env), LiveServer(tmp_path, **app_env)
    servers += [a, b]
    task = httpx2.post(f"{a.url}/api/queue", json={"prompt": "race"}).json()
    response_id = task["response_id"]
    body = json.dumps({"object": "event", "id": "evt_r", "type": "response.completed", "created_at": int(time.time()),
                       "data": {"id": response_id}}).encode()
    headers = signed_headers(secret, body)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda url: httpx2.post(f"{url}/api/webhook", content=body, headers=headers),
                                [a.url, b.url] * 4))
    assert [r.status_code for r in answers] == [200] * 8
    outcomes = [r.json()["outcome"] for r in answers]
    assert outcomes.count("updated") == 1, outcomes
    stats = httpx2.get(f"http://127.0.0.1:{emulator_port}/_emulator/stats").json()
    assert stats["calls"][f"retrieve:{response_id}"] == 1


@pytest.fixture
def read_only_copy():
    "The app's files in a folder the user `nobody` can read but not write (pytest's own tmp dirs are root-only)."
    app_dir = Path(tempfile.mkdtemp(prefix="vercel-like-"))
    for module in ROOT.glob("*.py"): shutil.copy(module, app_dir / module.name)
    shutil.copytree(ROOT / "static", app_dir / "static")
    subprocess.run(["chmod", "-R", "a-w,a+rX", str(app_dir)], check=True)
    yield app_dir
    subprocess.run(["chmod", "-R", "u+w", str(app_dir)], check=True)
    shutil.rmtree(app_dir)


def _as_nobody():
    require("setpriv", bool(shutil.which("setpriv")), "apt-get install -y util-linux (to run as an unprivileged user)")
    return ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


def test_vercel_read_only_deploy_starts_and_serves(tmp_path, servers, read_only_copy):
    app_dir, wrapper = read_only_copy, _as_nobody()
    server = LiveServer(tmp_path, cwd=app_dir, wrapper=wrapper, VERCEL="1", SESSION_SECRET="vercel-session-secret",
                        DATABASE_URL="sqlite:////tmp/vercel-test-%d.db" % free_port(), HOME="/tmp")
    servers.append(server)
    assert httpx2.get(server.url + "/health").json()["status"] == "ok"
    assert "Queue Task" in httpx2.get(server.url + "/").text
    assert httpx2.post(server.url + "/api/queue", json={"prompt": "on vercel"}).status_code == 202
    assert not (app_dir / "data").exists()


@pytest.mark.parametrize("env,says", [({}, "SESSION_SECRET is not set"),
                                      ({"SESSION_SECRET": "s" * 32}, "DATABASE_URL is not set")])
def test_on_vercel_a_missing_setting_stops_the_start_saying_what_to_set(read_only_copy, env, says):
    result = subprocess.run([*_as_nobody(), sys.executable, "-c", "import app"], cwd=read_only_copy, capture_output=True,
                            text=True, timeout=60, env={"VERCEL": "1", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", **env})
    assert result.returncode != 0
    assert says in result.stderr and "Environment Variables" in result.stderr
