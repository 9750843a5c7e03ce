"""Webhook security: only a correctly signed, fresh event changes anything, and each event once."""
import asyncio
import json
import time
from datetime import datetime, timezone

import httpx2
import pytest
from standardwebhooks import Webhook

from config import new_webhook_secret
from emulator import Emulator, sign, signed_headers
from tests.conftest import wait_for


def event(response_id="resp_unknown", kind="response.completed"):
    return {"object": "event", "id": "evt_test", "type": kind, "created_at": int(time.time()), "data": {"id": response_id}}


async def queued_task(harness, **kw):
    harness.emulator.deliver_webhooks = False
    harness.without_relay()
    task = (await harness.queue(**kw)).json()
    return task, (await (await harness.store()).get(task["id"]))["response_id"]


def test_signer_matches_the_standard_webhooks_test_vector():
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    independent = Webhook(secret).sign("msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(1614265330, timezone.utc), body.decode())
    assert independent == expected


async def test_an_independently_signed_event_is_accepted(harness):
    task, response_id = await queued_task(harness)
    await harness.wait_status(task["id"], "queued")
    await wait_for(lambda: harness.openai_status_is(response_id, "completed"))
    body = json.dumps(event(response_id))
    now = datetime.now(timezone.utc)
    headers = {"webhook-id": "msg_independent", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(harness.secret).sign("msg_independent", now, body),
               "content-type": "application/json"}
    response = await harness.client.post("/api/webhook", content=body, headers=headers)
    assert response.status_code == 200 and response.json()["outcome"] == "updated"
    assert (await harness.status(task["id"])).json()["status"] == "completed"


def _tamper_signature(headers, value):
    return {**headers, "webhook-signature": value}


@pytest.mark.parametrize("breakage", [
    "no-id", "no-timestamp", "no-signature", "v1", "v1,", "garbage", "wrong-secret", "tampered-body",
    "old-timestamp", "future-timestamp", "non-numeric-timestamp", "signature-for-other-id", "not-utf8",
])
async def test_bad_webhooks_get_400_and_change_nothing(harness, breakage):
    task, response_id = await queued_task(harness)
    await wait_for(lambda: harness.openai_status_is(response_id, "completed"))
    body = json.dumps(event(response_id)).encode()
    headers = signed_headers(harness.secret, body)
    if breakage.startswith("no-"): headers.pop("webhook-" + breakage[3:])
    elif breakage in ("v1", "v1,", "garbage"): headers["webhook-signature"] = {"garbage": "dGhpcyBpcyBub3QgaXQ="}.get(breakage, breakage)
    elif breakage == "wrong-secret": headers = signed_headers(new_webhook_secret(), body)
    elif breakage == "tampered-body": body = body.replace(b"response.completed", b"response.cancelled")
    elif breakage == "old-timestamp": headers = signed_headers(harness.secret, body, timestamp=int(time.time()) - 301)
    elif breakage == "future-timestamp": headers = signed_headers(harness.secret, body, timestamp=int(time.time()) + 301)
    elif breakage == "non-numeric-timestamp": headers["webhook-timestamp"] = "soon"
    elif breakage == "signature-for-other-id": headers["webhook-id"] = "wh_other"
    elif breakage == "not-utf8":
        body = b"\xff\xfe" + body
        headers = signed_headers(harness.secret, body)
    response = await harness.deliver(body, headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_webhook"
    stored = await (await harness.store()).get(task["id"])
    assert stored["status"] == "queued" and stored["output_text"] is None
    assert harness.emulator.calls["retrieve"] == 0


async def test_timestamps_inside_five_minutes_are_accepted(harness):
    task, response_id = await queued_task(harness)
    await wait_for(lambda: harness.openai_status_is(response_id, "completed"))
    response = await harness.deliver(event(response_id), timestamp=int(time.time()) - 290)
    assert response.status_code == 200
    assert (await harness.status(task["id"])).json()["status"] == "completed"


async def test_key_rotation_several_signatures_in_one_header(harness):
    task, response_id = await queued_task(harness)
    await wait_for(lambda: harness.openai_status_is(response_id, "completed"))
    body = json.dumps(event(response_id)).encode()
    headers = signed_headers(harness.secret, body)
    old = signed_headers(new_webhook_secret(), body, webhook_id=headers["webhook-id"], timestamp=int(headers["webhook-timestamp"]))
    headers["webhook-signature"] = f"{old['webhook-signature']} v1,bm90IGl0 {headers['webhook-signature']}"
    assert (await harness.deliver(body, headers)).status_code == 200
    assert (await harness.status(task["id"])).json()["status"] == "completed"


async def test_unknown_response_and_ignored_types_are_acknowledged_and_store_nothing(harness):
    "An unknown response is looked up once (it may be a task's whose queueing was interrupted), then acknowledged."
    unknown = await harness.deliver(event("resp_we_never_made"))
    assert unknown.status_code == 200 and unknown.json()["outcome"] == "unknown response"
    ignored = await harness.deliver({"object": "event", "id": "evt_b", "type": "batch.completed",
                                     "created_at": int(time.time()), "data": {"id": "batch_1"}})
    assert ignored.status_code == 200 and ignored.json()["outcome"] == "ignored"
    store = await harness.store()
    assert await store._fetch("SELECT * FROM webhook_events", {}) == []
    assert await store._fetch("SELECT * FROM tasks", {}) == []
    assert harness.emulator.calls["retrieve"] == 1


async def test_concurrent_duplicate_deliveries_have_one_effect(harness):
    task, response_id = await queued_task(harness)
    await wait_for(lambda: harness.openai_status_is(response_id, "completed"))
    body = json.dumps(event(response_id)).encode()
    headers = signed_headers(harness.secret, body)
    answers = await asyncio.gather(*[harness.deliver(body, headers) for _ in range(10)])
    assert [a.status_code for a in answers] == [200] * 10
    outcomes = sorted(a.json()["outcome"] for a in answers)
    assert outcomes.count("updated") == 1, outcomes
    assert harness.emulator.calls[f"retrieve:{response_id}"] == 1
    assert (await harness.status(task["id"])).json()["status"] == "completed"


async def test_an_early_event_does_not_move_the_task_past_what_openai_says(harness):
    task, response_id = await queued_task(harness)
    response = await harness.deliver(event(response_id))
    assert response.status_code == 200
    stored = await (await harness.store()).get(task["id"])
    assert stored["status"] in ("queued", "in_progress") and stored["output_text"] is None


async def test_a_late_event_never_overwrites_a_terminal_state(harness):
    task, response_id = await queued_task(harness)
    await wait_for(lambda: harness.openai_status_is(response_id, "completed"))
    assert (await harness.deliver(event(response_id))).json()["outcome"] == "updated"
    store = await harness.store()
    assert await store.advance(task["id"], "in_progress") is False
    late = await harness.deliver(event(response_id, "response.cancelled"))
    assert late.status_code == 200 and late.json()["outcome"] == "already final"
    final = (await harness.status(task["id"])).json()
    assert final["status"] == "completed" and final["output_text"]


async def test_a_failed_retrieve_leaves_the_event_for_openais_retry(harness):
    task, response_id = await queued_task(harness)
    await wait_for(lambda: harness.openai_status_is(response_id, "completed"))
    body = json.dumps(event(response_id)).encode()
    headers = signed_headers(harness.secret, body)
    harness.emulator.fail_next("retrieve", 500, "upstream trouble")
    first = await harness.deliver(body, headers)
    assert first.status_code == 503 and first.json()["error"]["message"]
    assert (await (await harness.store()).get(task["id"]))["status"] == "queued"
    retry = await harness.deliver(body, headers)
    assert retry.status_code == 200 and retry.json()["outcome"] == "updated"


async def test_openai_mode_without_a_secret_says_how_to_fix_it(make_harness):
    harness = await make_harness(openai_api_key="sk-test-not-real", base_url="http://127.0.0.1:9/v1")
    body = json.dumps(event()).encode()
    response = await harness.deliver(body, signed_headers(new_webhook_secret(), body))
    assert response.status_code == 503
    assert "OPENAI_WEBHOOK_SECRET is not set" in response.json()["error"]["message"]
    assert "sk-test" not in response.text


async def test_a_copy_arriving_while_the_first_fails_is_not_acknowledged(harness, monkeypatch):
    from openai_client import OpenAIError
    task, response_id = await queued_task(harness)
    await wait_for(lambda: harness.openai_status_is(response_id, "completed"))
    gateway = harness.services.gateway

    async def slow_failure(*args, **kwargs):
        await asyncio.sleep(0.3)
        raise OpenAIError(503, "OpenAI is slow today", "openai_timeout")
    monkeypatch.setattr(gateway, "retrieve", slow_failure)
    body = json.dumps(event(response_id)).encode()
    headers = signed_headers(harness.secret, body)
    answers = await asyncio.gather(harness.deliver(body, headers), harness.deliver(body, headers))
    assert [a.status_code for a in answers] == [503, 503], [a.text for a in answers]
    monkeypatch.undo()
    redelivered = await harness.deliver(body, headers)
    assert redelivered.status_code == 200 and redelivered.json()["outcome"] == "updated"
    assert (await (await harness.store()).get(task["id"]))["status"] == "completed"


async def test_a_delivery_attempt_that_fails_in_any_way_is_retried():
    "The emulator retries as OpenAI does whatever broke an attempt (here the receiver raising), not only httpx's errors."
    attempts = []

    async def receiver(scope, receive, send):
        attempts.append(scope["path"])
        if len(attempts) == 1: raise RuntimeError("the connection broke in a way httpx does not wrap")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    emulator = Emulator(receiver, new_webhook_secret(), delay=0)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=emulator.app), base_url="http://emulator") as client:
        created = await client.post("/v1/responses", headers={"Authorization": "Bearer sk-test"},
                                    json={"model": "gpt-5-mini", "input": "Hello", "background": True})
        assert created.status_code == 200, created.text
        await wait_for(lambda: [d["status"] for d in emulator.deliveries] == [None, 200], timeout=10)
    await emulator.stop()
    assert len(attempts) == 2
