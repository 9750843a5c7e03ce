"""Issue 10's "Done when", proved against the real `openai` SDK: the emulator is as strict as OpenAI's published schema
(bodies, stream events, refusals, webhooks), the app sends each model the request OpenAI expects, shows what comes back
(citations, summary, steps, refusal, incomplete, failed), maps OpenAI's errors per the contract, and keeps spend budgets.

Facts come from OpenAI's OpenAPI spec (openai/openai-openapi), the SDK (openai 3.x types) and the background and
deep-research guides."""
import html
import json
import re
import typing

import httpx2
import openai
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.webhooks import (
    ResponseCancelledWebhookEvent,
    ResponseCompletedWebhookEvent,
    ResponseFailedWebhookEvent,
    ResponseIncompleteWebhookEvent,
    UnwrapWebhookEvent,
)

from config import new_webhook_secret
from emulator import REFUSAL, Emulator
from inprocess import StreamingASGITransport
from models import MODELS, cost_usd
from results import state_of
from tests.conftest import wait_for

DELAY = 0.25
KEY = "sk-proj-TESTKEY0123456789abcdef"  # conftest's make_openai_harness key

# OpenAPI `components.schemas.Response.required`
RESPONSE_REQUIRED = ("id", "object", "created_at", "error", "incomplete_details", "instructions", "model", "tools", "output",
                     "parallel_tool_calls", "metadata", "tool_choice", "temperature", "top_p")
# OpenAPI `ResponseUsage`: every field required
USAGE_REQUIRED = {"input_tokens": int, "output_tokens": int, "total_tokens": int}
USAGE_DETAILS_REQUIRED = {"input_tokens_details": ("cached_tokens", "cache_write_tokens"),
                          "output_tokens_details": ("reasoning_tokens",)}
URL_CITATION_REQUIRED = ("type", "url", "title", "start_index", "end_index")
ERROR_ENVELOPE_REQUIRED = ("message", "type", "param", "code")  # OpenAPI `Error`
TERMINAL_EVENTS = ("response.completed", "response.failed", "response.incomplete")
WEBHOOK_TYPES = {"completed": ResponseCompletedWebhookEvent, "failed": ResponseFailedWebhookEvent,
                 "incomplete": ResponseIncompleteWebhookEvent, "cancelled": ResponseCancelledWebhookEvent}


def discriminated(union) -> pydantic.TypeAdapter:
    "A TypeAdapter that validates strictly against the member named by `type` (the SDK's own marker is not pydantic's)."
    members = typing.get_args(typing.get_args(union)[0])
    return pydantic.TypeAdapter(typing.Annotated[typing.Union[members], pydantic.Field(discriminator="type")])  # noqa: UP007


STREAM_EVENT = discriminated(ResponseStreamEvent)
WEBHOOK_EVENT = discriminated(UnwrapWebhookEvent)

MCP_TOOL = {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example.com/sse", "require_approval": "never"}
# name: (create parameters, final status)
SCENARIOS = {
    "plain": (dict(model="gpt-5-mini", input="Write about tides", reasoning={"summary": "auto"},
                   metadata={"task_id": "task_abcdefghijklmnop", "owner": "me"}), "completed"),
    "web_search": (dict(model="gpt-5-mini", input="Tides today", tools=[{"type": "web_search"}]), "completed"),
    "deep_research": (dict(model="o3-deep-research", input="How do tides work around the world?",
                           tools=[{"type": "web_search_preview"}], reasoning={"summary": "auto"},
                           metadata={"task_id": "task_deepdeepdeepdeep"}), "completed"),
    "file_search_and_mcp": (dict(model="o4-mini-deep-research", input="What do our documents say about tides?",
                                 tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}, MCP_TOOL]), "completed"),
    "refusal": (dict(model="gpt-5-mini", input="Do something bad [demo:refusal]"), "completed"),
    "incomplete": (dict(model="gpt-4.1", input="Write at length [demo:incomplete]"), "incomplete"),
    "max_output_tokens": (dict(model="gpt-4.1", input="Write at length about tides", max_output_tokens=20), "incomplete"),
    "failed": (dict(model="gpt-5-mini", input="Break [demo:failed]", reasoning={"summary": "auto"}), "failed"),
}


class WebhookInbox:
    "An ASGI app standing for the app's webhook endpoint: it records each delivery (path, headers, raw body) and says 200."

    def __init__(self):
        self.received: list[tuple[str, dict, bytes]] = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"): break
        self.received.append((scope["path"], {k.decode().lower(): v.decode() for k, v in scope["headers"]}, body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    def for_response(self, response_id: str) -> list[tuple[str, dict, bytes]]:
        return [r for r in self.received if json.loads(r[2]).get("data", {}).get("id") == response_id]


class Upstream:
    "The emulator as a strict upstream, reached by the real SDK."

    def __init__(self, delay: float = DELAY):
        "Events stream as the emulator sends them (httpx2's ASGITransport would hold a stream until its end)."
        self.inbox, self.secret = WebhookInbox(), new_webhook_secret()
        self.emulator = Emulator(self.inbox, self.secret, delay)
        self.client = openai.AsyncOpenAI(base_url="http://emulator.test/v1", api_key="sk-test", max_retries=0,
                                         http_client=httpx2.AsyncClient(transport=StreamingASGITransport(self.emulator.app)))

    async def create(self, **params) -> dict:
        raw = await self.client.responses.with_raw_response.create(background=True, **params)
        return raw.http_response.json()

    async def retrieve(self, response_id: str) -> dict:
        return (await self.client.responses.with_raw_response.retrieve(response_id)).http_response.json()

    async def status(self, response_id: str) -> str:
        return (await self.retrieve(response_id))["status"]

    async def close(self):
        await self.emulator.stop()
        await self.client.close()


@pytest.fixture
async def upstream():
    made = Upstream()
    yield made
    await made.close()


@pytest.fixture
async def slow_upstream():
    "Responses that run 30 s: time enough to act on one while it runs, however loaded the machine."
    made = Upstream(delay=30)
    yield made
    await made.close()


def assert_response_body(body: dict, sent: dict):
    "A Response body as OpenAI's schema and the SDK define it, echoing what was sent."
    Response.model_validate(body)
    assert [f for f in RESPONSE_REQUIRED if f not in body] == [], f"required fields missing from {body['status']} body"
    assert body["object"] == "response" and body["model"] == sent["model"]
    assert body["metadata"] == (sent.get("metadata") or {}), "metadata is not echoed"
    assert body["tools"] == (sent.get("tools") or [])
    assert (body.get("completed_at") is not None) == (body["status"] == "completed"), \
        f"completed_at={body.get('completed_at')} with status {body['status']}"
    if body.get("usage") is not None:
        usage = body["usage"]
        for name, kind in USAGE_REQUIRED.items(): assert isinstance(usage.get(name), kind), name
        for details, fields in USAGE_DETAILS_REQUIRED.items():
            for name in fields: assert isinstance((usage.get(details) or {}).get(name), int), f"usage.{details}.{name}"
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    for item in body["output"]:
        if item["type"] == "reasoning": assert isinstance(item["summary"], list)
        if item["type"] != "message": continue
        for part in item["content"]:
            if part["type"] != "output_text": continue
            assert "annotations" in part and "logprobs" in part, "output_text part lacks annotations or logprobs"
            for note in part["annotations"]:
                if note["type"] != "url_citation": continue
                assert [f for f in URL_CITATION_REQUIRED if f not in note] == []
                assert part["text"][note["start_index"]:note["end_index"]].strip(), "a citation spans no text"


# -- 1. the emulator, as strict as OpenAI

@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_every_response_body_matches_the_schema(upstream, scenario):
    sent, outcome = SCENARIOS[scenario]
    created = await upstream.create(**sent)
    assert created["status"] in ("queued", "in_progress") and created["background"] is True and created["usage"] is None
    bodies = [created]

    async def ended():
        bodies.append(await upstream.retrieve(created["id"]))
        return bodies[-1]["status"] not in ("queued", "in_progress")
    await wait_for(ended, timeout=5, interval=0.01)
    statuses = list(dict.fromkeys(b["status"] for b in bodies))
    assert statuses in (["queued", "in_progress", outcome], ["queued", outcome], ["in_progress", outcome]), statuses
    final = bodies[-1]
    script = (await upstream.emulator.records.get(created["id"])).script  # the body retrieve answers at a given moment
    running = script.body((script.started_at + script.ends_at) / 2)
    assert running["status"] == "in_progress"
    for body in (*bodies, running): assert_response_body(body, sent)
    sdk = Response.model_validate(final)
    assert final["usage"] is not None
    if outcome == "failed":
        assert final["error"]["code"] and final["error"]["message"] and final["incomplete_details"] is None
    else:
        assert final["error"] is None
    if outcome == "incomplete":
        assert final["incomplete_details"] == {"reason": "max_output_tokens"}
        assert sdk.output_text, "an incomplete response keeps the text written so far"
    if scenario == "refusal":
        parts = [p for item in final["output"] if item["type"] == "message" for p in item["content"]]
        assert parts == [{"type": "refusal", "refusal": REFUSAL}] and sdk.output_text == ""
    if scenario == "deep_research":
        kinds = [item["type"] for item in final["output"]]
        assert kinds[0] == "reasoning" and final["output"][0]["summary"][0]["text"]
        assert kinds.count("web_search_call") >= 1 and kinds[-1] == "message"
        assert all(i["action"]["type"] == "search" and i["action"]["query"] for i in final["output"]
                   if i["type"] == "web_search_call")
        notes = final["output"][-1]["content"][0]["annotations"]
        assert notes and all(n["type"] == "url_citation" and n["url"].startswith("https://") for n in notes)
        assert final["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    if scenario == "file_search_and_mcp":
        kinds = [item["type"] for item in final["output"]]
        assert {"file_search_call", "mcp_list_tools", "mcp_call"} <= set(kinds)


async def test_cancelled_bodies_match_the_schema_and_cancel_is_idempotent(slow_upstream):
    upstream, sent = slow_upstream, SCENARIOS["deep_research"][0]
    created = await upstream.create(**sent)
    first = (await upstream.client.responses.with_raw_response.cancel(created["id"])).http_response
    second = (await upstream.client.responses.with_raw_response.cancel(created["id"])).http_response
    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == second.json()["status"] == "cancelled"
    assert_response_body(first.json(), sent)
    assert_response_body(second.json(), sent)
    record = await upstream.emulator.records.get(created["id"])
    later = record.script.body(record.script.ends_at + 1)
    assert later["status"] == "cancelled" and later["completed_at"] is None
    assert_response_body(await upstream.retrieve(created["id"]), sent)


async def sdk_events(stream) -> list[dict]:
    "The stream's events as the SDK parsed them, back as dicts (only the keys that were sent)."
    return [event.to_dict() async for event in stream]


def assert_stream(events: list[dict], sent: dict, outcome: str):
    for event in events:
        STREAM_EVENT.validate_python(event)
        if "response" in event: assert_response_body(event["response"], sent)
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(len(events))), "sequence_number must count up from 0 without a gap"
    assert [e["type"] for e in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    terminal = [e for e in events if e["type"] in TERMINAL_EVENTS]
    assert terminal == [events[-1]] and terminal[0]["type"] == f"response.{outcome}"
    assert terminal[0]["response"]["status"] == outcome


@pytest.mark.parametrize("scenario", ["plain", "deep_research", "file_search_and_mcp", "refusal", "incomplete", "failed"])
async def test_stream_events_match_the_schema_and_resume_without_gap_or_repeat(upstream, scenario):
    sent, outcome = SCENARIOS[scenario]
    stream = await upstream.client.responses.create(background=True, stream=True, **sent)
    seen = []
    async for event in stream:  # the first events, then the connection drops
        seen.append(event.to_dict())
        if event.sequence_number == 3: break
    await stream.close()
    response_id = seen[0]["response"]["id"]
    rest = await sdk_events(await upstream.client.responses.retrieve(response_id, stream=True, starting_after=3))
    full = await sdk_events(await upstream.client.responses.retrieve(response_id, stream=True))
    assert seen + rest == full
    assert_stream(full, sent, outcome)
    if scenario == "deep_research":
        types = {e["type"] for e in full}
        assert {"response.reasoning_summary_text.delta", "response.web_search_call.searching",
                "response.output_text.annotation.added", "response.output_text.delta"} <= types
        deltas = "".join(e["delta"] for e in full if e["type"] == "response.output_text.delta")
        assert deltas == Response.model_validate(full[-1]["response"]).output_text
    for n in (0, len(full) // 2, len(full) - 2, len(full) - 1):
        resumed = await sdk_events(await upstream.client.responses.retrieve(response_id, stream=True, starting_after=n))
        assert resumed == full[n + 1:], f"starting_after={n}"


async def test_stream_is_refused_for_a_response_not_created_with_stream(upstream):
    created = await upstream.create(**SCENARIOS["plain"][0])
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk_events(await upstream.client.responses.retrieve(created["id"], stream=True, starting_after=0))
    assert refused.value.param == "stream"


def refusals():
    dr_tools = [{"type": "web_search_preview"}]
    return {
        "unknown model": (dict(model="gpt-unknown-9"), "model_not_found", "model"),
        "deep research without tools": (dict(model="o3-deep-research"), None, "tools"),
        "deep research with web_search": (dict(model="o4-mini-deep-research", tools=[{"type": "web_search"}]), None, "tools"),
        "deep research with a function tool": (dict(model="o3-deep-research", tools=[
            *dr_tools, {"type": "function", "name": "f", "parameters": {"type": "object"}}]), None, "tools"),
        "gpt-5 with effort none": (dict(model="gpt-5", reasoning={"effort": "none"}), "unsupported_value", "reasoning.effort"),
        "gpt-5.1 with effort minimal": (dict(model="gpt-5.1", reasoning={"effort": "minimal"}), "unsupported_value",
                                        "reasoning.effort"),
        "o3 with effort minimal": (dict(model="o3", reasoning={"effort": "minimal"}), "unsupported_value", "reasoning.effort"),
        "deep research with effort high": (dict(model="o3-deep-research", tools=dr_tools, reasoning={"effort": "high"}),
                                           "unsupported_value", "reasoning.effort"),
        "effort on gpt-4.1": (dict(model="gpt-4.1", reasoning={"effort": "low"}), "unsupported_parameter", "reasoning.effort"),
        "unknown parameter": (dict(model="gpt-5-mini", extra_body={"colour": "blue"}), "unknown_parameter", "colour"),
        "background without store": (dict(model="gpt-5-mini", store=False), None, None),
        "temperature on gpt-5": (dict(model="gpt-5", temperature=0.5), "unsupported_parameter", "temperature"),
        "concise summary on o3": (dict(model="o3", reasoning={"summary": "concise"}), "unsupported_value",
                                  "reasoning.summary"),
        "deep research with 3 vector stores": (dict(model="o3-deep-research", tools=[
            {"type": "file_search", "vector_store_ids": ["vs_1", "vs_2", "vs_3"]}]), None, "tools"),
        "deep research with an approval-needing MCP server": (dict(model="o3-deep-research", tools=[
            {**MCP_TOOL, "require_approval": "always"}]), None, "tools"),
    }


@pytest.mark.parametrize("case", refusals())
async def test_emulator_refuses_what_openai_refuses(upstream, case):
    params, code, param = refusals()[case]
    with pytest.raises(openai.BadRequestError) as refused:
        await upstream.client.responses.create(input="Hello", background=True, **params)
    error = refused.value.body
    assert [f for f in ERROR_ENVELOPE_REQUIRED if f not in error] == [] and error["type"] == "invalid_request_error"
    assert error["message"]
    if code: assert refused.value.code == code
    if param: assert refused.value.param == param
    if case == "unknown model": assert error["message"] == "The requested model 'gpt-unknown-9' does not exist."
    if code == "unsupported_value": assert "Supported values are" in error["message"]
    assert len(upstream.emulator.records) == 0, "a refused create must not create a response"


async def test_gpt_5_1_accepts_temperature(upstream):
    created = await upstream.create(model="gpt-5.1", input="Hello", temperature=0.7)
    assert created["temperature"] == 0.7


async def test_max_tool_calls_bounds_every_built_in_tool_call(upstream):
    sent = dict(model="o3-deep-research", input="What do our documents and the web say about tides?", max_tool_calls=1,
                tools=[{"type": "web_search_preview"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}, MCP_TOOL])
    created = await upstream.create(**sent)
    assert created["max_tool_calls"] == 1
    await wait_for(lambda: _is(upstream.status(created["id"]), "completed"), timeout=5)
    final = await upstream.retrieve(created["id"])
    calls = [i["type"] for i in final["output"] if i["type"] in ("web_search_call", "file_search_call", "mcp_call")]
    assert len(calls) == 1, calls


async def test_max_tool_calls_bounds_web_searches(upstream):
    created = await upstream.create(model="o3-deep-research", input="How do tides work?", max_tool_calls=1,
                                    tools=[{"type": "web_search_preview"}])
    await wait_for(lambda: _is(upstream.status(created["id"]), "completed"), timeout=5)
    final = await upstream.retrieve(created["id"])
    assert [i["type"] for i in final["output"]].count("web_search_call") == 1 and final["max_tool_calls"] == 1


async def test_cancel_of_a_finished_response_is_400_and_unknown_ids_are_404(upstream):
    created = await upstream.create(**SCENARIOS["plain"][0])
    await wait_for(lambda: _is(upstream.status(created["id"]), "completed"), timeout=5)
    with pytest.raises(openai.BadRequestError) as refused:
        await upstream.client.responses.cancel(created["id"])
    assert refused.value.body["message"] == "Cannot cancel a completed response."
    assert (await upstream.retrieve(created["id"]))["status"] == "completed"
    with pytest.raises(openai.NotFoundError):
        await upstream.client.responses.retrieve("resp_" + "0" * 48)
    with pytest.raises(openai.NotFoundError):
        await upstream.client.responses.cancel("resp_" + "0" * 48)


async def _is(awaitable, wanted) -> bool: return await awaitable == wanted


@pytest.mark.parametrize("outcome", ["completed", "failed", "incomplete", "cancelled"])
async def test_webhooks_verify_and_parse_with_the_sdk(upstream, slow_upstream, outcome):
    if outcome == "cancelled": upstream = slow_upstream
    prompt = {"completed": "Hello", "failed": "Hello [demo:failed]", "incomplete": "Hello [demo:incomplete]",
              "cancelled": "Hello"}[outcome]
    created = await upstream.create(model="gpt-5-mini", input=prompt)
    if outcome == "cancelled": await upstream.client.responses.cancel(created["id"])
    _path, headers, body = (await wait_for(lambda: upstream.inbox.for_response(created["id"]), timeout=5))[0]
    event = upstream.client.webhooks.unwrap(body, headers, secret=upstream.secret)
    assert isinstance(event, WEBHOOK_TYPES[outcome]) and event.type == f"response.{outcome}"
    assert event.data.id == created["id"] and event.id.startswith("evt_")
    payload = json.loads(body)
    WEBHOOK_EVENT.validate_python(payload)
    assert {"id", "created_at", "data", "type"} <= set(payload) and isinstance(payload["created_at"], int)
    assert payload.get("object") == "event"
    assert headers["content-type"] == "application/json" and headers["webhook-id"].startswith("wh_")
    assert headers["webhook-signature"].startswith("v1,")
    with pytest.raises(openai.InvalidWebhookSignatureError):
        upstream.client.webhooks.unwrap(body, headers, secret=new_webhook_secret())
    assert (await upstream.retrieve(created["id"]))["status"] == outcome
    assert len(upstream.inbox.for_response(created["id"])) == 1


# -- 2. the request the app sends for each model

async def sent_request(harness, **queue) -> tuple[dict, dict]:
    "Queue through the app; the task JSON and the create body OpenAI (the emulator) received."
    response = await harness.queue(queue.pop("prompt", "Write a long report on tides"), **queue)
    assert response.status_code == 202, response.text
    task = response.json()
    record = await harness.emulator.records.get(task["response_id"])
    return task, record.request


async def test_default_model_request(make_harness):
    harness = await make_harness(demo_delay_seconds=DELAY)
    task, request = await sent_request(harness)
    assert request["model"] == "gpt-5-mini" and request["input"] == "Write a long report on tides"
    assert request["background"] is True and request["store"] is True
    assert request["metadata"] == {"task_id": task["id"]}
    assert request["reasoning"] == {"summary": "auto"}
    assert not request.get("tools")
    assert "max_output_tokens" not in request and "max_tool_calls" not in request


async def test_deep_research_request_gets_web_search_preview_and_a_summary(make_harness):
    harness = await make_harness(demo_delay_seconds=DELAY)
    task, request = await sent_request(harness, model="o3-deep-research")
    assert request["tools"] == [{"type": "web_search_preview"}]
    assert request["reasoning"] == {"summary": "auto"}
    assert task["tools"] == ["web_search"]
    _, asked = await sent_request(harness, model="o4-mini-deep-research", reasoning_effort="medium", tools=["web_search"],
                                  max_tool_calls=5, max_output_tokens=50_000)
    assert asked["tools"] == [{"type": "web_search_preview"}]
    assert asked["reasoning"] == {"effort": "medium", "summary": "auto"}
    assert asked["max_tool_calls"] == 5 and asked["max_output_tokens"] == 50_000


async def test_non_reasoning_model_gets_no_reasoning_and_efforts_pass_through(make_harness):
    harness = await make_harness(demo_delay_seconds=DELAY)
    _, request = await sent_request(harness, model="gpt-4.1", tools=["web_search"])
    assert "reasoning" not in request and request["tools"] == [{"type": "web_search"}]
    for model, effort in (("gpt-5", "minimal"), ("gpt-5.1", "none"), ("gpt-5.2", "xhigh"), ("o3", "high")):
        _, request = await sent_request(harness, model=model, reasoning_effort=effort)
        assert request["reasoning"] == {"effort": effort, "summary": "auto"}, model


async def test_file_search_and_mcp_tools_from_settings(make_harness):
    harness = await make_harness(demo_delay_seconds=DELAY, vector_store_ids=("vs_a", "vs_b", "vs_c"),
                                 mcp_servers=(("docs", "https://mcp.example.com/sse"),))
    _, request = await sent_request(harness, model="gpt-5-mini", tools=["file_search", "mcp"])
    assert request["tools"] == [{"type": "file_search", "vector_store_ids": ["vs_a", "vs_b", "vs_c"]},
                                {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example.com/sse",
                                 "require_approval": "never"}]
    _, request = await sent_request(harness, model="o3-deep-research", tools=["file_search"])
    assert request["tools"] == [{"type": "file_search", "vector_store_ids": ["vs_a", "vs_b"]}]  # deep research: at most 2


@pytest.mark.parametrize("fields, says", [
    (dict(model="gpt-9-imaginary"), ["gpt-5-mini", "o3-deep-research"]),
    (dict(model="gpt-5", reasoning_effort="none"), ["minimal", "low", "medium", "high"]),
    (dict(model="gpt-5.1", reasoning_effort="minimal"), ["none", "low", "medium", "high"]),
    (dict(model="o3-deep-research", reasoning_effort="high"), ["medium"]),
    (dict(model="gpt-4.1", reasoning_effort="low"), ["gpt-4.1"]),
    (dict(model="o3-deep-research", tools=[]), ["web search", "OPENAI_VECTOR_STORE_IDS", "OPENAI_MCP_SERVERS"]),
    (dict(tools=["code_interpreter"]), ["code_interpreter"]),
    (dict(tools=["file_search"]), ["OPENAI_VECTOR_STORE_IDS"]),
    (dict(tools=["mcp"]), ["OPENAI_MCP_SERVERS"]),
    (dict(max_output_tokens=0), ["max_output_tokens"]),
    (dict(max_output_tokens=2_000_000), ["max_output_tokens"]),
    (dict(max_output_tokens="lots"), ["max_output_tokens"]),
    (dict(max_tool_calls=0), ["max_tool_calls"]),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else None)
async def test_app_refuses_bad_requests_before_openai_is_called(make_harness, fields, says):
    harness = await make_harness(demo_delay_seconds=DELAY)
    response = await harness.queue("Hello", **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type"}
    for word in says: assert word in error["message"], (word, error["message"])
    assert harness.emulator.calls["create"] == 0
    assert (await harness.client.get("/api/tasks")).json()["tasks"] == []


# -- 3. what the app shows

async def finished(harness, prompt: str, wanted: str, **fields) -> tuple[dict, str, dict]:
    "Queue, wait for `wanted`; the task JSON, its HTMX card (unescaped) and the response OpenAI (the emulator) ended with."
    response = await harness.queue(prompt, **fields)
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    await harness.wait_status(task_id, wanted)
    task = (await harness.status(task_id)).json()
    card = html.unescape((await harness.status(task_id, headers={"HX-Request": "true"})).text)
    record = await harness.emulator.records.get(task["response_id"])
    return task, card, record.script.body(record.script.ends_at)


async def test_completed_deep_research_shows_sources_summary_steps_and_cost(make_harness):
    harness = await make_harness(demo_delay_seconds=DELAY)
    task, card, body = await finished(harness, "How do tides work around the world?", "completed", model="o3-deep-research")
    notes = [n for item in body["output"] if item["type"] == "message" for p in item["content"] for n in p["annotations"]]
    first_cited = list(dict.fromkeys(n["url"] for n in notes))
    assert len(first_cited) >= 2
    assert task["sources"] == [{"url": url, "title": next(n["title"] for n in notes if n["url"] == url)} for url in first_cited]
    assert task["output_text"] == Response.model_validate(body).output_text
    assert task["reasoning_summary"] and task["reasoning_summary"] in "".join(
        p["text"] for i in body["output"] if i["type"] == "reasoning" for p in i["summary"])
    queries = [i["action"]["query"] for i in body["output"] if i["type"] == "web_search_call"]
    assert [(s["type"], s["detail"]) for s in task["steps"]] == [("web_search", q) for q in queries]
    for name in ("input_tokens", "output_tokens", "total_tokens"): assert task["usage"][name] == body["usage"][name]
    reasoning_tokens = [usage["output_tokens_details"]["reasoning_tokens"] for usage in (task["usage"], body["usage"])]
    assert reasoning_tokens[0] == reasoning_tokens[1] > 0
    assert isinstance(task["cost_usd"], float) and task["cost_usd"] > 0
    assert task["cost_usd"] == pytest.approx(cost_usd(MODELS["o3-deep-research"], body["usage"], len(queries)))
    assert task["refusal"] is None and task["error"] is None and task["incomplete_reason"] is None
    for number, url in enumerate(first_cited, 1):
        assert re.search(rf'<a href="{re.escape(url)}"[^>]*>\[{number}\]</a>', card), f"citation [{number}] not linked"
    assert "Sources" in card and all(s["title"] in card for s in task["sources"])
    assert "Reasoning summary" in card and "Searched the web" in card and queries[0] in card
    assert "(estimate)" in card


async def test_deep_research_end_to_end_against_the_emulator_as_a_strict_upstream(make_openai_harness):
    harness = await make_openai_harness(demo_delay_seconds=DELAY)
    response = await harness.queue("How do tides work around the world?", model="o3-deep-research")
    assert response.status_code == 202, response.text
    task = response.json()
    request = (await harness.emulator.records.get(task["response_id"])).request
    assert request["tools"] == [{"type": "web_search_preview"}] and request["metadata"] == {"task_id": task["id"]}
    await harness.wait_status(task["id"], "completed")
    done = (await harness.status(task["id"])).json()
    assert len(done["sources"]) == 3 and done["reasoning_summary"] and done["cost_usd"] > 0
    assert [s["type"] for s in done["steps"]] == ["web_search"] * 3


async def test_form_offers_web_search_and_limits(make_harness):
    harness = await make_harness(demo_delay_seconds=DELAY, vector_store_ids=("vs_a",))
    page = (await harness.client.get("/")).text
    assert re.search(r'<input[^>]*name="tools"[^>]*value="web_search"', page) and "Web search" in page
    assert 'value="file_search"' in page and 'value="mcp"' not in page
    assert 'name="max_output_tokens"' in page and 'name="max_tool_calls"' in page
    assert 'value="o3-deep-research"' in page
    response = await harness.client.post("/api/queue", data={"prompt": "Tides", "model": "gpt-5-mini", "tools": "web_search"})
    assert response.status_code == 202, response.text
    request = (await harness.emulator.records.get(response.json()["response_id"])).request
    assert request["tools"] == [{"type": "web_search"}]


async def test_web_search_cost_on_gpt_4_1_mini_counts_its_fixed_input_block(make_harness):
    harness = await make_harness(demo_delay_seconds=DELAY)
    task, _, body = await finished(harness, "Tides today", "completed", model="gpt-4.1-mini", tools=["web_search"])
    searches = sum(i["type"] == "web_search_call" for i in body["output"])
    usage = body["usage"]
    assert searches == 1 and usage["input_tokens"] >= 8000, "the fixed block is billed as input tokens, as usage shows them"
    expected = (usage["input_tokens"] * 0.40 + usage["output_tokens"] * 1.60) / 1e6 + searches * 0.01
    assert task["cost_usd"] == pytest.approx(expected, abs=1e-6)


async def test_refusal_is_shown_as_the_refusal(make_harness):
    harness = await make_harness(demo_delay_seconds=DELAY)
    task, card, _ = await finished(harness, "Do something bad [demo:refusal]", "completed")
    assert task["refusal"] == REFUSAL and task["output_text"] is None
    assert REFUSAL in card and "refused" in card


@pytest.mark.parametrize("prompt, fields", [("Write at length [demo:incomplete]", {}),
                                            ("Write at length about tides", {"model": "gpt-4.1", "max_output_tokens": 20})])
async def test_incomplete_keeps_and_shows_the_partial_text(make_harness, prompt, fields):
    harness = await make_harness(demo_delay_seconds=DELAY)
    task, card, body = await finished(harness, prompt, "incomplete", **fields)
    partial = Response.model_validate(body).output_text
    assert partial and task["output_text"] == partial
    assert task["incomplete_reason"] == "max_output_tokens"
    assert "Incomplete" in card and "max_output_tokens" in card
    assert partial.split("\n")[0] in card
    if fields: assert len(partial.split()) <= fields["max_output_tokens"]


async def test_failed_shows_openais_error(make_harness):
    harness = await make_harness(demo_delay_seconds=DELAY)
    task, card, body = await finished(harness, "Break [demo:failed]", "failed")
    assert body["error"]["message"] in task["error"] and task["output_text"] is None
    assert body["error"]["message"] in card and "Failed" in card


def test_results_read_a_response_as_the_sdk_does():
    "Sources once each in first-citation order over several text parts; output_text joined as Response.output_text."
    a, b = "https://a.example/x", "https://b.example/y"
    first, second = "Alpha is cited. Beta too.", " Alpha again."
    cite = lambda url, start, end: {"type": "url_citation", "url": url, "title": url[8:9].upper(), "start_index": start,
                                    "end_index": end}
    body = {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "completed_at": 2, "error": None,
            "incomplete_details": None, "instructions": None, "model": "o3-deep-research", "metadata": {"task_id": "t"},
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "temperature": None, "top_p": 1.0,
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "One."},
                                                                 {"type": "summary_text", "text": "Two."}]},
                {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}},
                {"type": "web_search_call", "id": "ws_2", "status": "completed",
                 "action": {"type": "open_page", "url": b}},
                {"type": "web_search_call", "id": "ws_3", "status": "completed",
                 "action": {"type": "find_in_page", "url": b, "pattern": "Beta"}},
                {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": [
                    {"type": "output_text", "text": first, "logprobs": [],
                     "annotations": [cite(b, 16, 25), cite(a, 0, 15)]}]},
                {"type": "message", "id": "msg_2", "role": "assistant", "status": "completed", "content": [
                    {"type": "output_text", "text": second, "logprobs": [], "annotations": [cite(b, 0, 13)]}]}]}
    sdk = Response.model_validate(body)
    state = state_of(body)
    assert state.output_text == sdk.output_text == first + second
    assert state.sources == [{"url": b, "title": "B"}, {"url": a, "title": "A"}]
    assert state.reasoning_summary and "One." in state.reasoning_summary and "Two." in state.reasoning_summary
    assert [(s["type"], s["detail"]) for s in state.steps] == [("web_search", "q"), ("web_search", b), ("web_search", b)]
    assert state.task_id == "t"


# -- 4. OpenAI's errors through the app's queue

OPENAI_ERRORS = {
    "400": (dict(status=400, message="Invalid 'input': string too long.", code="string_above_max_length"), 400,
            ["Invalid 'input': string too long."], None),
    "404": (dict(status=404, message="The model 'gpt-5-mini' does not exist or you do not have access to it.",
                 code="model_not_found"), 400, ["does not exist or you do not have access to it"], None),
    "422": (dict(status=422, message="Unprocessable request."), 400, ["Unprocessable request."], None),
    "401": (dict(status=401, message=f"Incorrect API key provided: {KEY}. You can find your API key at "
                                     "https://platform.openai.com/account/api-keys.", code="invalid_api_key"), 502,
            ["key"], None),
    "403": (dict(status=403, message="You are not allowed to sample from this model."), 502, ["key"], None),
    "quota": (dict(status=429, message="You exceeded your current quota, please check your plan and billing details.",
                   code="insufficient_quota"), 503, ["out of credit"], None),
    "retry-after-ms": (dict(status=429, message="Rate limit reached for requests.", code="rate_limit_exceeded",
                            headers={"retry-after-ms": "1500"}), 429, ["Rate limit reached"], "2"),
    "x-ratelimit-reset": (dict(status=429, message="Rate limit reached for tokens.", code="rate_limit_exceeded",
                               headers={"x-ratelimit-reset-requests": "6m0s"}), 429, ["Rate limit reached"], "360"),
    "retry-after": (dict(status=429, message="Rate limit reached for requests.", code="rate_limit_exceeded",
                         headers={"retry-after": "56"}), 429, ["Rate limit reached"], "56"),
    "x-ratelimit-reset 20ms": (dict(status=429, message="Rate limit reached for tokens.", code="rate_limit_exceeded",
                                    headers={"x-ratelimit-reset-tokens": "20ms"}), 429, ["Rate limit reached"], "1"),
    "x-ratelimit-reset 1m30s": (dict(status=429, message="Rate limit reached for tokens.", code="rate_limit_exceeded",
                                     headers={"x-ratelimit-reset-tokens": "1m30s"}), 429, ["Rate limit reached"], "90"),
    "503": (dict(status=503, message="The engine is currently overloaded."), 502, ["overloaded", "Try again"], None),
    "timeout": (dict(status=-1), 503, ["did not answer in time"], None),
    "connection drop": (dict(status=0), 503, ["Could not reach OpenAI"], None),
    "500": (dict(status=500, message="The server had an error while processing your request."), 502, ["server error"], None),
}


@pytest.mark.parametrize("case", OPENAI_ERRORS)
async def test_openai_errors_are_mapped_per_the_contract(make_openai_harness, case):
    failure, status, says, retry_after = OPENAI_ERRORS[case]
    harness = await make_openai_harness(demo_delay_seconds=DELAY)
    harness.emulator.fail_next("create", **failure)
    response = await harness.queue("Hello")
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type"}
    for word in says: assert word in error["message"], (word, error["message"])
    assert response.headers.get("retry-after") == retry_after
    assert "try again in a minute" not in error["message"].lower() or status == 429
    tasks = await harness.client.get("/api/tasks")
    for text in (response.text, str(response.headers), tasks.text):
        assert KEY not in text and KEY[8:] not in text, "the key leaked"
    assert harness.emulator.calls["create"] == 1


@pytest.mark.parametrize("marker, status, says, retry_after", [
    ("[demo:quota]", 503, "out of credit", None),
    ("[demo:rate_limit]", 429, "Rate limit reached", "20"),
    ("[demo:server_error]", 502, "server error", None),
])
async def test_demo_markers_reach_each_error(make_harness, marker, status, says, retry_after):
    harness = await make_harness(demo_delay_seconds=DELAY)
    response = await harness.queue(f"Hello {marker}")
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]
    assert response.headers.get("retry-after") == retry_after


# -- 5. spend budgets

@pytest.mark.parametrize("budget", ["daily_budget_usd", "app_daily_budget_usd"])
async def test_a_queue_over_budget_is_refused_before_openai_is_called(make_harness, budget):
    harness = await make_harness(demo_delay_seconds=DELAY, **{budget: 0.01})
    response = await harness.queue("Write a very long report", model="gpt-5", max_output_tokens=100_000)
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "budget_exceeded" and "$0.01" in error["message"] and "UTC" in error["message"]
    assert 0 < int(response.headers["retry-after"]) <= 86_400
    assert harness.emulator.calls["create"] == 0
    assert (await harness.client.get("/api/tasks")).json()["tasks"] == []


async def test_a_running_task_reserves_what_its_limits_let_it_cost(make_harness):
    harness = await make_harness(demo_delay_seconds=30, daily_budget_usd=0.015)
    first = await harness.queue("Report", model="gpt-5", max_output_tokens=1000)  # may cost ~ $0.0101
    assert first.status_code == 202, first.text
    second = await harness.queue("Report", model="gpt-5", max_output_tokens=1000)
    assert second.status_code == 429 and second.json()["error"]["type"] == "budget_exceeded"
    assert harness.emulator.calls["create"] == 1


async def test_a_queue_openai_refused_costs_nothing(make_openai_harness):
    harness = await make_openai_harness(demo_delay_seconds=DELAY, daily_budget_usd=0.015)
    harness.emulator.fail_next("create", 500, "The server had an error while processing your request.")
    assert (await harness.queue("Report", model="gpt-5", max_output_tokens=1000)).status_code == 502
    again = await harness.queue("Report", model="gpt-5", max_output_tokens=1000)
    assert again.status_code == 202, again.text


async def test_each_owner_has_its_own_daily_budget(make_harness):
    harness = await make_harness(demo_delay_seconds=30, daily_budget_usd=0.015, access_tokens=("token-a", "token-b"))
    asked = {"prompt": "Report", "model": "gpt-5", "max_output_tokens": 1000}

    async def queue(token):
        return await harness.client.post("/api/queue", json=asked, headers={"Authorization": f"Bearer {token}"})
    assert (await queue("token-a")).status_code == 202
    assert (await queue("token-a")).status_code == 429
    assert (await queue("token-b")).status_code == 202


async def test_page_shows_spend_against_the_budget(make_harness):
    with_budget = await make_harness(demo_delay_seconds=DELAY, daily_budget_usd=5)
    assert (await with_budget.queue("Hello")).status_code == 202
    page = (await with_budget.client.get("/")).text
    assert "Spent today" in page and "$5.00" in page
    without = await make_harness(demo_delay_seconds=DELAY)
    assert "Spent today" not in (await without.client.get("/")).text


# -- models offered beyond the table, and the README

async def test_a_model_from_openai_models_runs_with_no_price(make_harness):
    harness = await make_harness(demo_delay_seconds=DELAY, models=("gpt-4o",))
    response = await harness.queue("Hello", model="gpt-4o")
    assert response.status_code == 202, response.text
    task = await harness.wait_status(response.json()["id"], "completed")
    assert (await harness.status(task["id"])).json()["cost_usd"] is None


def test_readme_documents_models_tools_costs_and_errors():
    from tests.conftest import ROOT
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"curl [^`]*o[34](-mini)?-deep-research", readme), "no curl example of a deep-research request"
    for name in MODELS: assert f"`{name}`" in readme or f"| {name} " in readme, f"model {name} is not documented"
    for word in ("web_search", "file_search", "max_tool_calls", "max_output_tokens", "cost_usd", "budget_exceeded",
                 "insufficient_quota", "sources", "reasoning_summary", "refusal", "incomplete_reason"):
        assert word in readme, word
