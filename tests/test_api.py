"""The HTTP contract, end to end: the real SDK, the emulator, its signed webhook, a real SQLite file."""

import pytest


def assert_error_shape(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type"}
    assert body["error"]["message"]


async def test_queue_json_completes_through_the_signed_webhook(harness):
    harness.without_relay()
    response = await harness.queue("Summarise the history of tide tables")
    assert response.status_code == 202
    task = response.json()
    assert task["status"] == "queued" and task["status_url"] == f"/api/status/{task['id']}"
    assert response.headers["location"] == task["status_url"]
    assert {"id", "status", "prompt", "model", "output_text", "error", "created_at", "updated_at", "completed_at"} <= set(task)
    # reconcile is set to an hour, so only the webhook can complete the task
    await harness.wait_status(task["id"], "completed")
    done = (await harness.status(task["id"])).json()
    assert done["status"] == "completed"
    assert done["output_text"].startswith("[Demo mode]") and "tide tables" in done["output_text"]
    assert done["completed_at"].endswith("Z") and done["error"] is None
    assert [d["status"] for d in harness.emulator.deliveries] == [200]
    assert harness.emulator.calls["retrieve"] == 1


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
async def test_queue_accepts_form_bodies(harness, encoding):
    if encoding == "urlencoded":
        response = await harness.client.post("/api/queue", data={"prompt": "Plan a garden"})
    else:
        response = await harness.client.post("/api/queue", files={"prompt": (None, "Plan a garden")})
    assert response.status_code == 202, response.text
    assert response.json()["prompt"] == "Plan a garden"


async def test_htmx_cards_follow_the_progress_stream_until_terminal_then_stop(make_harness):
    harness = await make_harness(demo_delay_seconds=3)
    hx = {"HX-Request": "true"}
    response = await harness.client.post("/api/queue", data={"prompt": "<script>alert(1)</script>"}, headers=hx)
    assert response.status_code == 202
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "<html" not in html and "every 2s" not in html
    assert 'sse-connect="/api/events/' in html and 'sse-close="done"' in html and 'hx-trigger="htmx:sseError delay:2s"' in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'hx-swap-oob="true"' in html and 'id="prompt-form"' in html
    task_id = html.split('data-task-id="')[1].split('"')[0]
    running = (await harness.status(task_id, headers=hx)).text
    assert 'sse-connect="/api/events/' in running
    await harness.wait_status(task_id, "completed", timeout=15)
    final = (await harness.status(task_id, headers=hx)).text
    assert "hx-trigger" not in final and "hx-get" not in final and "sse-connect" not in final
    assert "Completed" in final and "&lt;script&gt;" in final and "<script>" not in final


async def test_page_lists_this_browsers_tasks_and_announces_demo_mode(harness):
    page = await harness.client.get("/")
    assert page.status_code == 200 and "Demo mode" in page.text and "Queue Task" in page.text
    assert "/static/vendor/htmx.min.js" in page.text and "cdn" not in page.text.lower()
    await harness.client.post("/api/queue", data={"prompt": "Mine & only mine"})
    assert "Mine &amp; only mine" in (await harness.client.get("/")).text
    stranger = harness.client.__class__(transport=harness.client._transport, base_url="http://testserver")
    assert "Mine &amp; only mine" not in (await stranger.get("/")).text
    await stranger.aclose()


@pytest.mark.parametrize("body,headers,status", [
    (b'{"prompt": ""}', {"content-type": "application/json"}, 400),
    (b'{"prompt": "   \\n "}', {"content-type": "application/json"}, 400),
    (b'{}', {"content-type": "application/json"}, 400),
    (b'{"prompt": 42}', {"content-type": "application/json"}, 400),
    (b'["prompt"]', {"content-type": "application/json"}, 400),
    (b'{"prompt": "x"', {"content-type": "application/json"}, 400),
    (b'\xff\xfe', {"content-type": "application/json"}, 400),
    (b"prompt=", {"content-type": "application/x-www-form-urlencoded"}, 400),
    (b"other=1", {"content-type": "application/x-www-form-urlencoded"}, 400),
    (b"prompt=hi", {"content-type": "text/plain"}, 415),
    (b"prompt=hi", {}, 415),
    (b'{"prompt": "hi", "model": "gpt-unknown"}', {"content-type": "application/json"}, 400),
    (b'{"prompt": "hi", "reasoning_effort": "extreme"}', {"content-type": "application/json"}, 400),
])
async def test_bad_queue_requests_get_a_clear_4xx_and_store_nothing(harness, body, headers, status):
    response = await harness.client.post("/api/queue", content=body, headers=headers)
    assert_error_shape(response, status)
    assert await (await harness.store()).list_for_owner("*", 5) == []
    assert harness.emulator.calls["create"] == 0


async def test_prompt_over_the_limit_and_huge_bodies_get_413(harness):
    too_long = await harness.queue("x" * 2001)
    assert_error_shape(too_long, 413)
    assert "2000" in too_long.json()["error"]["message"]
    huge = await harness.client.post("/api/queue", content=b"prompt=" + b"a" * 5_000_000,
                                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert_error_shape(huge, 413)

    async def chunked():
        for _ in range(100): yield b"a" * 100_000
    streamed = await harness.client.post("/api/queue", content=chunked(), headers={"content-type": "application/json"})
    assert_error_shape(streamed, 413)
    assert harness.emulator.calls["create"] == 0


async def test_htmx_errors_land_in_the_form_error_slot(harness):
    response = await harness.client.post("/api/queue", data={"prompt": ""}, headers={"HX-Request": "true"})
    assert response.status_code == 400
    assert response.headers["hx-retarget"] == "#form-error"
    assert "prompt is empty" in response.text and 'role="alert"' in response.text


async def test_unknown_task_is_404_in_json_and_html(harness):
    assert_error_shape(await harness.status("task_nope"), 404)
    html = await harness.status("task_<b>nope", headers={"HX-Request": "true"})
    assert html.status_code == 404 and "<b>" not in html.text


async def test_health_reports_mode_store_and_secret(harness):
    response = await harness.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "mode": "demo", "store": "sqlite", "webhook_secret": True}


async def test_health_is_503_when_the_store_is_unreachable(make_harness, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    broken = await make_harness(database_url=f"sqlite:///{blocker}/tasks.db")
    response = await broken.client.get("/health")
    assert response.status_code == 503 and response.json()["status"] == "unavailable"
    assert_error_shape(await broken.queue("hello"), 503)


async def test_static_files_are_served_from_the_static_folder_only(harness):
    assert (await harness.client.get("/static/vendor/htmx.min.js")).status_code == 200
    for path in ("/app.py", "/requirements.txt", "/.env", "/static/../app.py", "/data/tasks.db"):
        assert (await harness.client.get(path)).status_code == 404, path


async def test_browser_line_breaks_count_as_one_character(make_harness):
    harness = await make_harness(max_prompt_chars=3)
    response = await harness.client.post("/api/queue", files={"prompt": (None, "a\r\nb")})
    assert response.status_code == 202 and response.json()["prompt"] == "a\nb"


def test_an_unknown_database_url_stops_the_app_at_start_up_with_a_message(settings):
    from dataclasses import replace

    from web import create_app
    with pytest.raises(SystemExit, match="DATABASE_URL must start with sqlite:/// or postgresql://"):
        create_app(replace(settings, database_url="mysql://root@127.0.0.1/test"))
