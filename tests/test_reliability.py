"""Never stuck: reconcile on read, cancel, OpenAI's errors, idempotent queueing, all with the real SDK."""
import asyncio
import re
import time

import pytest

from emulator import MemoryRecords
from tasks import NOT_FOUND_MESSAGE
from tests.conftest import wait_for

KEY = "sk-proj-TESTKEY0123456789abcdef"


async def test_without_webhooks_a_task_still_completes_by_reconcile(make_harness):
    harness = await make_harness(demo_webhooks=False, reconcile_seconds=0.2)
    task = (await harness.queue()).json()

    async def completed():
        return (await harness.status(task["id"])).json()["status"] == "completed"
    await wait_for(completed)
    assert harness.emulator.deliveries == []
    assert (await harness.status(task["id"])).json()["output_text"].startswith("[Demo mode]")


async def test_fifty_pollers_cause_at_most_one_retrieve_per_interval(make_harness):
    interval = 0.5
    harness = await make_harness(demo_webhooks=False, reconcile_seconds=interval, demo_delay_seconds=30)
    task = (await harness.queue()).json()
    response_id = (await (await harness.store()).get(task["id"]))["response_id"]
    started = time.monotonic()
    rounds = 0
    while time.monotonic() - started < 3 * interval:
        answers = await asyncio.gather(*[harness.status(task["id"]) for _ in range(50)])
        assert all(a.status_code == 200 for a in answers)
        rounds += 1
    retrieves = harness.emulator.calls[f"retrieve:{response_id}"]
    assert rounds >= 3
    assert 1 <= retrieves <= (time.monotonic() - started) / interval + 1, (retrieves, rounds)


async def test_the_page_reconciles_running_tasks_too(make_harness):
    harness = await make_harness(demo_webhooks=False, reconcile_seconds=0.1)
    await harness.client.get("/")  # a browser: its session owns what it queues
    task = (await harness.queue("page check")).json()
    async def page_shows_completed():
        return "Completed" in (await harness.client.get("/")).text
    await wait_for(page_shows_completed)
    assert (await (await harness.store()).get(task["id"]))["status"] == "completed"
    assert harness.emulator.deliveries == []


@pytest.mark.parametrize("directive,status,shown", [
    ("[demo:failed]", "failed", "The demo was asked to fail"),
    ("[demo:incomplete]", "incomplete", "max_output_tokens"),
])
async def test_failed_and_incomplete_endings_show_why(harness, directive, status, shown):
    task = (await harness.queue(f"Please end badly {directive}")).json()
    await harness.wait_status(task["id"], status)
    body = (await harness.status(task["id"])).json()
    assert shown in body["error"]
    card = (await harness.status(task["id"], headers={"HX-Request": "true"})).text
    assert shown in card and "hx-trigger" not in card
    assert harness.emulator.deliveries[-1]["event"]["type"] == f"response.{status}"


async def test_a_response_openai_no_longer_knows_ends_as_failed(make_openai_harness):
    harness = await make_openai_harness(reconcile_seconds=0, demo_delay_seconds=30)
    task = (await harness.queue()).json()
    harness.emulator.records = MemoryRecords()  # OpenAI forgot it
    body = (await harness.status(task["id"])).json()
    assert body["status"] == "failed" and body["error"] == NOT_FOUND_MESSAGE


async def test_demo_processes_sharing_a_database_answer_alike_for_each_others_tasks(make_harness):
    """`uvicorn --workers 2` (or Vercel) in demo mode: each process has its own emulator, but they keep their
    responses in the shared database, so B's emulator knows A's response and B reconciles it as A would."""
    a = await make_harness(reconcile_seconds=0, demo_delay_seconds=1)
    b = await make_harness(reconcile_seconds=0)
    task = (await a.queue()).json()
    assert (await b.status(task["id"])).json()["status"] in ("queued", "in_progress")
    assert b.emulator.calls["retrieve"] == 1

    async def completed():
        return (await b.status(task["id"])).json()["status"] == "completed"
    await wait_for(completed)


async def test_cancel_a_running_task_twice_is_safe(make_harness):
    harness = await make_harness(demo_delay_seconds=30)
    task = (await harness.queue()).json()
    first = await harness.client.post(f"/api/cancel/{task['id']}")
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    second = await harness.client.post(f"/api/cancel/{task['id']}")
    assert second.status_code == 200 and second.json()["status"] == "cancelled"
    assert harness.emulator.calls["cancel"] == 1
    await harness.emulator.wait_idle()
    assert [d["event"]["type"] for d in harness.emulator.deliveries] == ["response.cancelled"]


async def test_cancel_after_completion_keeps_the_result(harness):
    task = (await harness.queue()).json()
    await harness.wait_status(task["id"], "completed")
    after = await harness.client.post(f"/api/cancel/{task['id']}")
    assert after.json()["status"] == "completed" and after.json()["output_text"]


async def test_cancel_racing_completion_ends_in_openais_state(make_harness):
    harness = await make_harness(demo_delay_seconds=0.3)
    for _ in range(5):
        task = (await harness.queue()).json()
        response_id = (await (await harness.store()).get(task["id"]))["response_id"]
        await wait_for(lambda: harness.openai_status_is(response_id, "in_progress"))
        record = await harness.emulator.records.get(response_id)
        await asyncio.sleep(max(0.0, record.created_at + 0.3 - time.time()))  # aim the cancel at the moment it completes
        await harness.client.post(f"/api/cancel/{task['id']}")
        await harness.emulator.wait_idle()
        final = await (await harness.store()).get(task["id"])
        truth = await harness.emulator.status_of(response_id)
        assert final["status"] == truth
        assert (final["output_text"] is not None) == (truth == "completed")


async def test_cancel_button_on_a_running_card_only(make_harness):
    harness = await make_harness(demo_delay_seconds=30)
    card = (await harness.client.post("/api/queue", data={"prompt": "long"}, headers={"HX-Request": "true"})).text
    task_id = card.split('data-task-id="')[1].split('"')[0]
    assert f'hx-post="/api/cancel/{task_id}"' in card
    cancelled = (await harness.client.post(f"/api/cancel/{task_id}", headers={"HX-Request": "true"})).text
    assert "Cancelled" in cancelled and "hx-post" not in cancelled and "hx-trigger" not in cancelled
    assert (await harness.client.post("/api/cancel/task_nope")).status_code == 404


@pytest.mark.parametrize("status,headers,expected,kind,says", [
    (401, None, 502, "openai_auth", "refused the API key (401)"),
    (403, None, 502, "openai_auth", "refused the API key (403)"),
    (404, None, 400, "openai_bad_request", "OpenAI refused the request"),
    (400, None, 400, "openai_bad_request", "OpenAI refused the request"),
    (429, {"retry-after": "17"}, 429, "openai_rate_limited", "Retry after 17 s"),
    (500, None, 502, "openai_server_error", "server error (500)"),
    (503, None, 502, "openai_server_error", "server error (503)"),
    (-1, None, 503, "openai_timeout", "did not answer in time"),
    (0, None, 503, "openai_unreachable", "Could not reach OpenAI"),
])
async def test_openai_errors_on_queue_are_clear_and_never_leak_the_key(make_openai_harness, status, headers, expected, kind, says):
    harness = await make_openai_harness()
    harness.emulator.fail_next("create", status, f"Incorrect API key provided: {KEY}. You can find your API key at ...", headers)
    response = await harness.queue()
    assert response.status_code == expected
    error = response.json()["error"]
    assert error["type"] == kind and says in error["message"]
    assert KEY not in response.text and KEY[8:] not in response.text
    if status == 429: assert response.headers["retry-after"] == "17"
    assert harness.emulator.calls["create"] == 1  # no SDK retry: the person is told at once


async def test_openai_error_shows_in_the_card_on_the_page(make_openai_harness):
    harness = await make_openai_harness()
    harness.emulator.fail_next("create", 429, "Rate limit reached for requests", {"retry-after": "20"})
    await harness.client.get("/")  # a browser loads the page first: its session owns what it queues
    response = await harness.client.post("/api/queue", data={"prompt": "hi"}, headers={"HX-Request": "true"})
    assert response.status_code == 429
    assert "Failed" in response.text and "Rate limit reached" in response.text and "Retry after 20 s" in response.text
    page = (await harness.client.get("/")).text
    assert "Rate limit reached" in page and "Demo mode" not in page


async def test_openai_mode_completes_through_a_webhook_signed_with_the_configured_secret(make_openai_harness):
    harness = await make_openai_harness()
    task = (await harness.queue()).json()
    await harness.wait_status(task["id"], "completed")
    assert [d["status"] for d in harness.emulator.deliveries] == [200]
    health = (await harness.client.get("/health")).json()
    assert health["mode"] == "openai" and health["webhook_secret"] is True and KEY not in str(health)


async def test_same_idempotency_key_sequentially_makes_one_response(harness):
    first = await harness.queue("once", idempotency_key="k-1")
    again = await harness.client.post("/api/queue", json={"prompt": "once"}, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert harness.emulator.calls["create"] == 1


async def test_same_idempotency_key_concurrently_makes_one_response(harness):
    await harness.client.get("/")  # one browser: one session cookie for all the clicks
    answers = await asyncio.gather(*[harness.client.post("/api/queue", data={"prompt": "double click", "idempotency_key": "form-1"},
                                                         headers={"HX-Request": "true"}) for _ in range(5)])
    assert all(a.status_code == 202 for a in answers)
    ids = {a.text.split('data-task-id="')[1].split('"')[0] for a in answers}
    assert len(ids) == 1 and harness.emulator.calls["create"] == 1


async def test_the_form_carries_a_fresh_idempotency_key_per_render(harness):
    pattern = re.compile(r'<input[^>]*name="idempotency_key"[^>]*>')
    inputs = [pattern.search((await harness.client.get("/")).text).group(0) for _ in range(2)]
    keys = [re.search(r'value="([^"]+)"', i).group(1) for i in inputs]
    assert keys[0] != keys[1] and len(keys[0]) >= 16


async def test_model_and_reasoning_effort_are_used_and_checked(make_harness):
    harness = await make_harness(models=("gpt-5-mini", "o4-mini"))
    page = (await harness.client.get("/")).text
    assert 'name="model"' in page and "o4-mini" in page and 'name="reasoning_effort"' in page
    task = (await harness.queue(model="o4-mini", reasoning_effort="high")).json()
    record = await harness.emulator.records.get((await (await harness.store()).get(task["id"]))["response_id"])
    assert record.request["model"] == "o4-mini" and record.request["reasoning"]["effort"] == "high"
    assert (await harness.queue(model="gpt-4-nope")).status_code == 400


async def test_usage_and_timing_are_stored_and_shown(harness):
    task = (await harness.queue("count my tokens please")).json()
    await harness.wait_status(task["id"], "completed")
    body = (await harness.status(task["id"])).json()
    assert body["usage"]["input_tokens"] == 4 and body["usage"]["output_tokens"] > 0
    card = (await harness.status(task["id"], headers={"HX-Request": "true"})).text
    assert "Tokens: 4 in" in card and "took" in card


async def test_api_tasks_lists_the_callers_tasks_newest_first_with_a_cursor(harness):
    await harness.client.get("/")  # a browser session owns these tasks
    ids = [(await harness.queue(f"task {i}")).json()["id"] for i in range(5)]
    page1 = (await harness.client.get("/api/tasks?limit=2")).json()
    page2 = (await harness.client.get(f"/api/tasks?limit=2&cursor={page1['next_cursor']}")).json()
    page3 = (await harness.client.get(f"/api/tasks?limit=2&cursor={page2['next_cursor']}")).json()
    listed = [t["id"] for t in page1["tasks"] + page2["tasks"] + page3["tasks"]]
    assert listed == ids[::-1] and page3["next_cursor"] is None
    assert (await harness.client.get("/api/tasks?cursor=not-a-cursor")).status_code == 400
    stranger = harness.client.__class__(transport=harness.client._transport, base_url="http://testserver")
    await stranger.get("/")
    assert (await stranger.get("/api/tasks")).json() == {"tasks": [], "next_cursor": None}
    await stranger.aclose()
    assert (await harness.client.get("/api/tasks?limit=abc")).status_code == 400


async def test_api_calls_without_a_session_share_the_api_owner(harness):
    plain = harness.client.__class__(transport=harness.client._transport, base_url="http://testserver")
    first = await plain.post("/api/queue", json={"prompt": "from curl"}, headers={"Idempotency-Key": "curl-1"})
    again = await plain.post("/api/queue", json={"prompt": "from curl"}, headers={"Idempotency-Key": "curl-1"})
    assert first.json()["id"] == again.json()["id"] and "set-cookie" not in first.headers
    assert [t["id"] for t in (await plain.get("/api/tasks")).json()["tasks"]] == [first.json()["id"]]
    conflict = await plain.post("/api/queue", json={"prompt": "another prompt"}, headers={"Idempotency-Key": "curl-1"})
    assert conflict.status_code == 409 and conflict.json()["error"]["type"] == "idempotency_conflict"
    await plain.aclose()


async def test_a_key_refused_by_openai_can_be_retried(make_openai_harness):
    harness = await make_openai_harness()
    harness.emulator.fail_next("create", 429, "Rate limit reached", {"retry-after": "1"})
    refused = await harness.client.post("/api/queue", json={"prompt": "again"}, headers={"Idempotency-Key": "k"})
    retried = await harness.client.post("/api/queue", json={"prompt": "again"}, headers={"Idempotency-Key": "k"})
    assert refused.status_code == 429 and retried.status_code == 202 and retried.json()["status"] == "queued"
    assert harness.emulator.calls["create"] == 2


async def test_an_answer_that_is_not_a_response_fails_the_task_with_a_clear_error(make_openai_harness):
    harness = await make_openai_harness()
    harness.emulator.fail_next("create", 200, "<html>a proxy's login page</html>")
    response = await harness.queue()
    assert response.status_code == 502 and "not a Responses API response" in response.json()["error"]["message"]
    assert (await harness.client.get("/api/tasks")).json()["tasks"][0]["status"] == "failed"


async def test_a_task_whose_queueing_was_interrupted_ends_as_failed(harness):
    from store import new_task_row
    store = await harness.store()
    row = new_task_row(id="task_interrupted00000", owner="api", prompt="p", model="m")
    row["created_at"] -= 600
    await store.create(row)
    body = (await harness.status(row["id"])).json()
    assert body["status"] == "failed" and "interrupted" in body["error"]
