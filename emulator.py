"""Demo mode's stand-in for the OpenAI Responses API, as strict as OpenAI, and its signed webhook sender.

`POST /v1/responses` (background, and `stream=true`), `GET /v1/responses/{id}` (and `?stream=true&starting_after=n`)
and `POST /v1/responses/{id}/cancel`, answering with the bodies, events and errors of OpenAI's published
OpenAPI schema: it refuses unknown parameters and models, efforts a model does not take, deep research without
a data source, and cancelling a finished response. A response is a script computed from its request and the
time since it was created, so any process that can read its record answers the same (`records`: in memory,
bounded, or the app's database). Prompt markers make each ending reachable: `[demo:failed]`, `[demo:incomplete]`,
`[demo:refusal]`, and on create `[demo:quota]`, `[demo:rate_limit]`, `[demo:server_error]`; `[demo:long]` makes the
answer as long as a deep-research report.
When a response ends, an event is POSTed to the webhook target, signed as OpenAI signs (Standard Webhooks).
`/_emulator/*` lets tests and benchmarks count calls and make the next call fail.
Run it alone with `python emulator.py` (EMULATOR_PORT, EMULATOR_WEBHOOK_URL, OPENAI_WEBHOOK_SECRET).
"""
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import typing
from collections import Counter, OrderedDict
from dataclasses import dataclass
from functools import cached_property

import httpx2
from openai.types.responses.response_create_params import ResponseCreateParamsStreaming
from openai.types.shared import ResponsesModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from models import MODELS, model_named


def _literal_values(annotation) -> set[str]:
    "The strings a typing.Literal (nested in Unions) allows."
    if typing.get_origin(annotation) is typing.Literal: return {a for a in typing.get_args(annotation) if isinstance(a, str)}
    return set().union(*map(_literal_values, typing.get_args(annotation)))

log = logging.getLogger("emulator")
DELIVERY_BACKOFF_SECONDS = (0.5, 1, 2, 4, 8)
TERMINAL = ("completed", "failed", "cancelled", "incomplete")
CREATE_PARAMETERS = frozenset(ResponseCreateParamsStreaming.__annotations__)
KNOWN_MODELS = frozenset(_literal_values(ResponsesModel)) | set(MODELS)  # the model ids OpenAI's schema names
DATA_SOURCES = ("web_search_preview", "mcp", "file_search")
DEEP_RESEARCH_TOOLS = (*DATA_SOURCES, "code_interpreter")
TOOL_TYPES = ("web_search", "web_search_preview", "file_search", "mcp", "code_interpreter", "function")
SOURCES = [("https://www.example.org/tides/how-tides-form", "How tides form — Example Ocean Institute"),
           ("https://www.example.edu/astronomy/moon-and-sun", "The Moon, the Sun and the sea — Example University"),
           ("https://www.example.net/coasts/tidal-ranges", "Why tidal ranges differ — Example Coastal Survey")]
REFUSAL = "I'm sorry, but I can't help with that. (The demo was asked to refuse: [demo:refusal] in the prompt.)"


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    "The `webhook-signature` value for a body, as Standard Webhooks define it."
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, body: bytes, webhook_id: str | None = None, timestamp: int | None = None) -> dict:
    webhook_id = webhook_id or "wh_" + secrets.token_hex(12)
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, webhook_id, timestamp, body), "content-type": "application/json",
            "user-agent": "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"}


class Refused(Exception):
    "What OpenAI answers a request it refuses: its status and its error object."

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers
        self.error = {"message": message, "type": kind, "param": param, "code": code}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error}, status_code=self.status, headers=self.headers)


def check_create(body) -> None:
    "Refuse what OpenAI refuses: unknown parameters and models, efforts and summaries a model does not take, bad tools."
    if not isinstance(body, dict): raise Refused(400, "The request body must be a JSON object.")
    for name in body:
        if name not in CREATE_PARAMETERS: raise Refused(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model: raise Refused(400, "Missing required parameter: 'model'.", param="model",
                                                              code="missing_required_parameter")
    if model not in KNOWN_MODELS:
        raise Refused(400, f"The requested model '{model}' does not exist.", param="model", code="model_not_found")
    if not isinstance(body.get("input"), (str, list)):
        raise Refused(400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if body.get("background") and body.get("store") is False:
        raise Refused(400, "Background sampling requires store=true.", param="background", code="unsupported_parameter")
    _check_reasoning(model_named(model), body.get("reasoning") or {}, body)
    _check_tools(model_named(model), body.get("tools") or [])
    metadata = body.get("metadata") or {}
    if len(metadata) > 16 or not all(isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()):
        raise Refused(400, "Invalid 'metadata': at most 16 string pairs.", param="metadata", code="invalid_value")
    for limit in ("max_output_tokens", "max_tool_calls"):
        value = body.get(limit)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise Refused(400, f"Invalid '{limit}': expected an integer of 1 or more.", param=limit, code="invalid_value")


def _listing(values) -> str:
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _check_reasoning(model, reasoning: dict, body: dict):
    if not model.reasoning:
        for name in ("effort", "summary"):
            if reasoning.get(name) is not None:
                raise Refused(400, f"Unsupported parameter: 'reasoning.{name}' is not supported with this model.",
                              param=f"reasoning.{name}", code="unsupported_parameter")
        return
    if body.get("temperature") is not None and not model.takes_temperature:
        raise Refused(400, "Unsupported parameter: 'temperature' is not supported with this model.", param="temperature",
                      code="unsupported_parameter")
    effort = reasoning.get("effort")
    if effort is not None and effort not in model.efforts:
        raise Refused(400, f"Unsupported value: '{effort}' is not supported with the '{model.name}' model. Supported values "
                           f"are: {_listing(model.efforts)}.", param="reasoning.effort", code="unsupported_value")
    summary = reasoning.get("summary")
    if summary is not None and summary not in ("auto", "detailed"):
        raise Refused(400, f"Unsupported value: '{summary}' is not supported with the '{model.name}' model. Supported values "
                           "are: 'auto' and 'detailed'.", param="reasoning.summary", code="unsupported_value")


def _check_tools(model, tools: list):
    types = [tool.get("type") if isinstance(tool, dict) else None for tool in tools]
    for tool, kind in zip(tools, types):
        if kind not in TOOL_TYPES: raise Refused(400, f"Invalid value: '{kind}'. Supported tool types are listed in the API "
                                                      "reference.", param="tools", code="invalid_value")
        if kind == "file_search" and not tool.get("vector_store_ids"):
            raise Refused(400, "Missing required parameter: 'tools[].vector_store_ids'.", param="tools")
        if kind == "mcp" and not (tool.get("server_label") and (tool.get("server_url") or tool.get("connector_id"))):
            raise Refused(400, "Missing required parameter: 'tools[].server_label' and 'tools[].server_url'.", param="tools")
    if not model.deep_research: return
    if any(kind not in DEEP_RESEARCH_TOOLS for kind in types):
        raise Refused(400, "Deep research models only support the 'web_search_preview', 'code_interpreter', 'mcp', and "
                           "'file_search' tools.", param="tools")
    if not any(kind in DATA_SOURCES for kind in types):
        raise Refused(400, "Deep research models require at least one of 'web_search_preview', 'mcp', or 'file_search' tools.",
                      param="tools")
    for tool, kind in zip(tools, types):
        if kind == "mcp" and tool.get("require_approval") != "never":
            raise Refused(400, "Deep research models require MCP servers with require_approval set to 'never'.", param="tools")
        if kind == "file_search" and len(tool.get("vector_store_ids") or []) > 2:
            raise Refused(400, "Deep research models support at most 2 vector stores.", param="tools")


def create_refusal(prompt: str) -> Refused | None:
    "The refusal a prompt marker asks for on create: out of credit, rate limited, or a server error."
    if "[demo:quota]" in prompt:
        return Refused(429, "You exceeded your current quota, please check your plan and billing details. (The demo was asked "
                            "for this: [demo:quota] in the prompt.)", "insufficient_quota", code="insufficient_quota")
    if "[demo:rate_limit]" in prompt:
        return Refused(429, "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in "
                            "20s. (The demo was asked for this: [demo:rate_limit] in the prompt.)", "requests",
                       code="rate_limit_exceeded",
                       headers={"retry-after": "20", "retry-after-ms": "20000", "x-ratelimit-reset-requests": "20s"})
    if "[demo:server_error]" in prompt:
        return Refused(500, "The server had an error while processing your request. (The demo was asked for this.)", "server_error")
    return None


@dataclass
class Record:
    "What is kept of a response: everything else follows from it and the clock."
    id: str
    created_at: float
    delay: float
    request: dict
    cancelled_at: float | None = None

    @cached_property
    def script(self) -> "Script": return Script(self)


def prompt_of(request: dict) -> str:
    value = request.get("input")
    if isinstance(value, str): return value
    return " ".join(part.get("text", "") for item in value or [] if isinstance(item, dict)
                    for part in (item.get("content") if isinstance(item.get("content"), list) else [item]) if isinstance(part, dict))


def words(text: str) -> list[str]:
    "Text in the pieces it is streamed in (a word and the space after it), which also serve as its token count."
    return re.findall(r"\S+\s*|\s+", text)


class Script:
    """The events of a response and its final body: the answer, its summary, searches and citations.

    Events are spread from the end of queueing (a tenth of `delay`) to `delay` seconds after creation."""

    def __init__(self, record: Record):
        self.record, self.request = record, record.request
        self.prompt, self.model = prompt_of(self.request), model_named(self.request["model"])
        self.tool_types = [tool["type"] for tool in self.request.get("tools") or []]
        self.outcome = next((s for s in ("failed", "incomplete") if f"[demo:{s}]" in self.prompt), "completed")
        self.output, self.events = [], []
        self._build()
        self.started_at = record.created_at + record.delay / 10
        self.ends_at = record.created_at + record.delay
        step = (self.ends_at - self.started_at) / max(1, len(self.events))
        self.timed = [(self.started_at + i * step, event) for i, event in enumerate(self.events)]

    # -- the output, as items and as the events that stream them

    def _build(self):
        "The output: reasoning, then tool calls (at most `max_tool_calls` of them, all tools counted), then the message."
        searches = (3 if self.model.deep_research else 1) if {"web_search", "web_search_preview"} & set(self.tool_types) else 0
        calls = ["web_search"] * searches + [t for t in ("file_search", "mcp") if t in self.tool_types]
        calls = calls[:self.request["max_tool_calls"]] if self.request.get("max_tool_calls") is not None else calls
        if self.model.reasoning: self._reasoning()
        for i, call in enumerate(calls):
            {"web_search": lambda: self._web_search(i), "file_search": self._file_search, "mcp": self._mcp}[call]()
        if self.outcome != "failed": self._message(calls.count("web_search"))

    def _item(self, item: dict, streamed: list[dict]):
        index = len(self.output)
        self.output.append(item)
        added = {**item, "status": "in_progress"} if "status" in item else item
        if item["type"] == "message": added = {**added, "content": []}
        if item["type"] == "reasoning": added = {**added, "summary": []}
        self.events.append({"type": "response.output_item.added", "output_index": index, "item": added})
        for event in streamed: self.events.append({"output_index": index, "item_id": item["id"], **event})
        self.events.append({"type": "response.output_item.done", "output_index": index, "item": item})

    def _reasoning(self):
        summary = []
        if (self.request.get("reasoning") or {}).get("summary"):
            summary = [{"type": "summary_text", "text": f"**Planning the answer**\n\nThe question asks about "
                                                       f"\"{self.prompt.strip()[:80]}\". I will look at what is known, "
                                                       "compare the sources, and write a short report with citations."}]
        events = []
        for index, part in enumerate(summary):
            events.append({"type": "response.reasoning_summary_part.added", "summary_index": index,
                           "part": {"type": "summary_text", "text": ""}})
            events += [{"type": "response.reasoning_summary_text.delta", "summary_index": index, "delta": piece}
                       for piece in words(part["text"])]
            events += [{"type": "response.reasoning_summary_text.done", "summary_index": index, "text": part["text"]},
                       {"type": "response.reasoning_summary_part.done", "summary_index": index, "part": part}]
        self._item({"id": "rs_" + self._suffix("rs"), "type": "reasoning", "summary": summary}, events)

    def _web_search(self, index: int):
        query = " ".join(self.prompt.split()[:6]) + ("" if index == 0 else f" {('sources', 'evidence')[index % 2]}")
        item = {"id": f"ws_{self._suffix('ws' + str(index))}", "type": "web_search_call", "status": "completed",
                "action": {"type": "search", "query": query}}
        self._item(item, [{"type": f"response.web_search_call.{phase}"} for phase in ("in_progress", "searching", "completed")])

    def _file_search(self):
        item = {"id": "fs_" + self._suffix("fs"), "type": "file_search_call", "status": "completed",
                "queries": [" ".join(self.prompt.split()[:6])], "results": None}
        self._item(item, [{"type": f"response.file_search_call.{phase}"} for phase in ("in_progress", "searching", "completed")])

    def _mcp(self):
        tool = next(t for t in self.request["tools"] if t["type"] == "mcp")
        self._item({"id": "mcpl_" + self._suffix("mcpl"), "type": "mcp_list_tools", "server_label": tool["server_label"],
                    "tools": [{"name": "search", "input_schema": {"type": "object"}}], "error": None},
                   [{"type": "response.mcp_list_tools.in_progress"}, {"type": "response.mcp_list_tools.completed"}])
        arguments = json.dumps({"query": " ".join(self.prompt.split()[:6])})
        self._item({"id": "mcp_" + self._suffix("mcp"), "type": "mcp_call", "server_label": tool["server_label"],
                    "name": "search", "arguments": arguments, "output": "No documents matched (demo).", "error": None,
                    "status": "completed"},
                   [{"type": "response.mcp_call.in_progress"}, {"type": "response.mcp_call_arguments.done", "arguments": arguments},
                    {"type": "response.mcp_call.completed"}])

    def _message(self, searches: int):
        if "[demo:refusal]" in self.prompt:
            part = {"type": "refusal", "refusal": REFUSAL}
            streamed = [{"type": "response.refusal.delta", "delta": piece} for piece in words(REFUSAL)]
            streamed.append({"type": "response.refusal.done", "refusal": REFUSAL})
        else:
            text, annotations = demo_answer(self.prompt, searches)
            text = self._truncated(text)
            annotations = [a for a in annotations if a["end_index"] <= len(text)]
            part = {"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}
            streamed = [{"type": "response.output_text.delta", "delta": piece, "logprobs": []} for piece in words(text)]
            streamed += [{"type": "response.output_text.annotation.added", "annotation_index": i, "annotation": a}
                         for i, a in enumerate(annotations)]
            streamed.append({"type": "response.output_text.done", "text": text, "logprobs": []})
        empty = {**part, "text": "", "annotations": []} if part["type"] == "output_text" else {**part, "refusal": ""}
        streamed = ([{"type": "response.content_part.added", "part": empty}] + streamed
                    + [{"type": "response.content_part.done", "part": part}])
        status = "incomplete" if self.outcome == "incomplete" else "completed"
        self._item({"id": "msg_" + self._suffix("msg"), "type": "message", "status": status, "role": "assistant",
                    "content": [part]}, [{"content_index": 0, **event} for event in streamed])

    def _truncated(self, text: str) -> str:
        "The answer as far as `max_output_tokens` lets it go (`[demo:incomplete]`: half of it); a cut makes it incomplete."
        pieces, limit = words(text), self.request.get("max_output_tokens")
        keep = len(pieces) // 2 if self.outcome == "incomplete" else len(pieces)
        if limit is not None and limit - self.reasoning_tokens < keep:
            keep, self.outcome = max(0, limit - self.reasoning_tokens), "incomplete"
        return "".join(pieces[:keep])

    def _suffix(self, salt: str) -> str:
        return hashlib.sha256(f"{self.record.id}:{salt}".encode()).hexdigest()[:40]

    # -- the response at a moment

    @property
    def reasoning_tokens(self) -> int: return 64 if self.model.reasoning else 0

    def status(self, now: float) -> str:
        record = self.record
        if record.cancelled_at is not None and record.cancelled_at <= min(now, self.ends_at): return "cancelled"
        if now >= self.ends_at: return self.outcome
        return "queued" if now < self.started_at else "in_progress"

    def usage(self) -> dict:
        text = "".join(part.get("text") or part.get("refusal") or "" for item in self.output if item["type"] == "message"
                       for part in item["content"])
        summary = "".join(p["text"] for item in self.output if item["type"] == "reasoning" for p in item["summary"])
        searches = sum(item["type"] == "web_search_call" for item in self.output)
        inputs, outputs = len(words(self.prompt)) + searches * self.model.search_input_tokens, len(words(text)) + len(words(summary)) + self.reasoning_tokens
        return {"input_tokens": inputs, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": outputs, "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                "total_tokens": inputs + outputs}

    def body(self, now: float) -> dict:
        "The Response object at `now`, with every field the schema requires."
        status, request = self.status(now), self.request
        ended = status in ("completed", "failed", "incomplete")
        return {
            "id": self.record.id, "object": "response", "created_at": int(self.record.created_at), "status": status,
            "background": bool(request.get("background")), "model": request["model"], "output": self.output if ended else [],
            "error": {"code": "server_error", "message": "The demo was asked to fail ([demo:failed] in the prompt)."}
            if status == "failed" else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": request.get("instructions"), "metadata": request.get("metadata") or {},
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "temperature": request.get("temperature", 1.0) if self.model.takes_temperature else None,
            "top_p": request.get("top_p", 1.0), "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [], "store": request.get("store", True),
            "max_output_tokens": request.get("max_output_tokens"), "max_tool_calls": request.get("max_tool_calls"),
            "reasoning": {"effort": (request.get("reasoning") or {}).get("effort"),
                          "summary": (request.get("reasoning") or {}).get("summary")},
            "completed_at": int(self.ends_at) if status == "completed" else None,
            "usage": self.usage() if ended else None, "text": {"format": {"type": "text"}},
            "truncation": "disabled", "service_tier": "default",
        }

    def stream(self, after: int = -1) -> list[tuple[float, dict]]:
        "(when, event) pairs with `sequence_number` over `after`, as OpenAI streams them, cut at a cancel."
        record = self.record
        timed = [(record.created_at, {"type": "response.created", "response": self.body(record.created_at)}),
                 (record.created_at, {"type": "response.queued", "response": self.body(record.created_at)}),
                 (self.started_at, {"type": "response.in_progress", "response": self.body(self.started_at)}),
                 *self.timed,
                 (self.ends_at, {"type": f"response.{self.outcome}", "response": self.body(self.ends_at)})]
        cut = record.cancelled_at if record.cancelled_at is not None else float("inf")
        return [(when, {**event, "sequence_number": n}) for n, (when, event) in enumerate(timed) if n > after and when < cut]


LONG_PARTS = 24
LONG_PARAGRAPH = ("This part is made up too, so that a demo answer is as long as a deep-research report (some 15 KB): "
                  "the Moon raises a bulge of water on the side of the Earth that faces it and another on the far side, "
                  "and the Earth turns under both, so most coasts see two high tides a day. The Sun does the same, less "
                  "than half as strongly; when the two pull together, the tides are larger. A bay's shape and depth "
                  "decide how the water answers: some basins rock in step with the pull and their tides grow, others "
                  "damp it. *None of this was looked up*: it is here to be streamed, rendered and measured.")


def demo_answer(prompt: str, searches: int = 0) -> tuple[str, list[dict]]:
    "A made-up answer that says plainly it is a demo; with searches, a report whose sentences cite placeholder sources."
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    first_line = prompt.strip().splitlines()[0][:200] if prompt.strip() else ""
    text = (f"[Demo mode] No model was called: this answer was made up on your machine.\n\n"
            f"- **Your prompt**: {len(prompt.split())} words, {len(prompt)} characters (fingerprint `{digest}`)\n"
            f"- **It began**: {first_line}\n\n")
    annotations = []
    if searches:
        text += "## What the sources say\n\n"
        claims = ("Tides are raised mostly by the Moon's pull, and a little by the Sun's.",
                  "When Sun and Moon line up, spring tides are larger; at right angles, neap tides are smaller.",
                  "The shape of a coast and its basin decide whether a bay sees one high tide a day or two.")
        for claim, (url, title) in list(zip(claims, SOURCES))[:searches]:
            start = len(text)
            text += claim
            annotations.append({"type": "url_citation", "url": url, "title": title, "start_index": start, "end_index": len(text)})
            text += " "
        text = text.rstrip() + "\n\n"
    if "[demo:long]" in prompt: text += "".join(f"## Part {n}\n\n{LONG_PARAGRAPH}\n\n" for n in range(1, LONG_PARTS + 1))
    return text + "Set `OPENAI_API_KEY` to run it on OpenAI.", annotations


class MemoryRecords:
    "Records in this process, the oldest dropped beyond `limit`."

    def __init__(self, limit: int = 10_000):
        self.limit, self._records = limit, OrderedDict()

    async def add(self, record: Record):
        self._records[record.id] = record
        while len(self._records) > self.limit: self._records.popitem(last=False)

    async def get(self, response_id: str) -> Record | None: return self._records.get(response_id)

    async def cancel(self, response_id: str, at: float):
        record = self._records.get(response_id)
        if record and record.cancelled_at is None:
            record.cancelled_at = at
            record.__dict__.pop("script", None)

    def __len__(self): return len(self._records)


class DatabaseRecords:
    "Records in the app's database, so that every process and every Vercel instance answers alike for a response."

    def __init__(self, store):
        self.store, self.recent = store, MemoryRecords(1_000)

    async def add(self, record: Record):
        await self.store.add_emulated(record.id, record.created_at, record.delay, record.request)

    async def get(self, response_id: str) -> Record | None:
        "The record as stored, its script built once per process while its cancel time stays the same."
        row = await self.store.emulated(response_id)
        if row is None: return None
        known = await self.recent.get(response_id)
        if known and known.cancelled_at == row["cancelled_at"]: return known
        record = Record(row["id"], row["created_at"], row["delay"], row["request"], row["cancelled_at"])
        await self.recent.add(record)
        return record

    async def cancel(self, response_id: str, at: float):
        await self.store.cancel_emulated(response_id, at)

    def __len__(self): return 0


def sse(event: dict) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


class Emulator:
    """The emulated Responses API; `app` is its ASGI app, `webhook_target` a URL or an ASGI app."""

    def __init__(self, webhook_target, secret: str, delay: float = 3.0, deliver_webhooks: bool = True, records=None):
        self.webhook_target, self.secret, self.delay = webhook_target, secret, delay
        self.deliver_webhooks = deliver_webhooks
        self.records = records if records is not None else MemoryRecords()
        self.calls: Counter = Counter()
        self.open_streams: Counter = Counter()
        self.deliveries: list[dict] = []
        self.planned_failures: dict[str, list[dict]] = {}
        self.cut_streams_after: int | None = None  # end every stream after this many events, as a dropped stream would
        self._tasks: set[asyncio.Task] = set()
        self._completions: dict[str, asyncio.Task] = {}
        self.app = self._network_faults(Starlette(routes=[
            Route("/v1/responses", self.create, methods=["POST"]),
            Route("/v1/responses/{id}", self.retrieve, methods=["GET"]),
            Route("/v1/responses/{id}/cancel", self.cancel, methods=["POST"]),
            Route("/_emulator/stats", self.stats, methods=["GET"]),
            Route("/_emulator/fail", self.plan_failure, methods=["POST"]),
        ]))

    def fail_next(self, operation: str, status: int, message: str = "Emulated failure", headers: dict | None = None,
                  code: str | None = None):
        """Make the next `operation` (create, retrieve, cancel, stream) answer `status` with an OpenAI-style error; 0 drops
        the connection, -1 times out, 200 answers `message` as plain text (a proxy's page, not the API)."""
        self.planned_failures.setdefault(operation, []).append(
            {"status": status, "message": message, "headers": headers, "code": code})

    def _network_faults(self, app):
        "The app, failing as a network does where a planned failure says so: before any answer is sent."
        async def with_faults(scope, receive, send):
            if scope["type"] == "http":
                method, path = scope["method"], scope["path"]
                operation = ("create" if path == "/v1/responses" else "cancel" if path.endswith("/cancel")
                             else "retrieve" if method == "GET" and path.startswith("/v1/responses/") else None)
                planned = self.planned_failures.get(operation) or [{}]
                if planned[0].get("status") in (0, -1):
                    self.calls[operation] += 1
                    failure = planned.pop(0)
                    if failure["status"] == 0: raise httpx2.ConnectError("emulated connection drop")
                    raise httpx2.ReadTimeout("emulated timeout")
            await app(scope, receive, send)
        return with_faults

    def _planned_failure(self, operation: str):
        planned = self.planned_failures.get(operation)
        if not planned: return None
        failure = planned.pop(0)
        if failure["status"] == 200: return PlainTextResponse(failure["message"])
        kind = {401: "invalid_request_error", 429: "rate_limit_error", 400: "invalid_request_error"}.get(failure["status"], "api_error")
        return Refused(failure["status"], failure["message"], failure["code"] or kind, code=failure["code"],
                       headers=failure["headers"]).response()

    async def create(self, request: Request):
        self.calls["create"] += 1
        if failure := self._planned_failure("create"): return failure
        try: body = json.loads(await request.body())
        except ValueError: return Refused(400, "We could not parse the JSON body of your request.").response()
        try:
            check_create(body)
            if refusal := create_refusal(prompt_of(body)): raise refusal
        except Refused as refused: return refused.response()
        record = Record("resp_" + secrets.token_hex(24), time.time(), self.delay, body)
        await self.records.add(record)
        self.calls["created:" + str((body.get("metadata") or {}).get("task_id"))] += 1
        if body.get("background"): self._completions[record.id] = self._spawn(self._deliver_when_done(record))
        if body.get("stream"): return self._stream(record, -1)
        return JSONResponse(record.script.body(time.time()))

    async def retrieve(self, request: Request):
        response_id = request.path_params["id"]
        self.calls["retrieve"] += 1
        self.calls["retrieve:" + response_id] += 1
        if failure := self._planned_failure("retrieve"): return failure
        record = await self.records.get(response_id)
        if record is None: return Refused(404, f"Response with id '{response_id}' not found.").response()
        if request.query_params.get("stream") != "true": return JSONResponse(record.script.body(time.time()))
        if not (record.request.get("background") and record.request.get("stream")):
            return Refused(400, "This response cannot be streamed because it was not created with stream=true.",
                           param="stream").response()
        try: after = int(request.query_params.get("starting_after", "-1"))
        except ValueError: return Refused(400, "Invalid 'starting_after': expected an integer.", param="starting_after").response()
        return self._stream(record, after)

    def _stream(self, record: Record, after: int) -> StreamingResponse:
        self.calls["stream"] += 1
        if failure := self._planned_failure("stream"): return failure
        return StreamingResponse(self._events(record, after), media_type="text/event-stream")

    async def _events(self, record: Record, after: int):
        "The script's events as time reaches them; a cancel (seen in the records) ends the stream."
        self.open_streams[record.id] += 1
        try:
            for sent, (when, event) in enumerate(record.script.stream(after)):
                if self.cut_streams_after is not None and sent >= self.cut_streams_after: return
                while (wait := when - time.time()) > 0:
                    await asyncio.sleep(min(wait, 0.5))
                    current = await self.records.get(record.id)
                    if current and current.cancelled_at is not None: return
                yield sse(event)
        finally:
            self.open_streams[record.id] -= 1

    async def cancel(self, request: Request):
        self.calls["cancel"] += 1
        if failure := self._planned_failure("cancel"): return failure
        response_id = request.path_params["id"]
        record = await self.records.get(response_id)
        if record is None: return Refused(404, f"Response with id '{response_id}' not found.").response()
        if not record.request.get("background"): return Refused(400, "Cannot cancel a synchronous response.").response()
        now = time.time()
        status = record.script.status(now)
        if status in ("completed", "failed"): return Refused(400, f"Cannot cancel a {status} response.").response()
        if status == "incomplete": return Refused(400, "Cannot cancel a response in terminal state.").response()
        if status != "cancelled":
            await self.records.cancel(response_id, now)
            record = await self.records.get(response_id)
            if completion := self._completions.pop(response_id, None): completion.cancel()
            self._spawn(self._deliver(record, "response.cancelled"))
        return JSONResponse(record.script.body(now))

    async def status_of(self, response_id: str) -> str | None:
        "A response's status now (for tests and benchmarks)."
        record = await self.records.get(response_id)
        return record.script.status(time.time()) if record else None

    async def stats(self, request: Request):
        return JSONResponse({"calls": dict(self.calls), "responses": len(self.records), "deliveries": len(self.deliveries),
                             "open_streams": {k: v for k, v in self.open_streams.items() if v}})

    async def plan_failure(self, request: Request):
        body = await request.json()
        self.fail_next(body["operation"], int(body["status"]), body.get("message", "Emulated failure"), body.get("headers"),
                       body.get("code"))
        return JSONResponse({"planned": body})

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver_when_done(self, record: Record):
        await asyncio.sleep(max(0.0, record.script.ends_at - time.time()))
        self._completions.pop(record.id, None)
        await self._deliver(record, f"response.{record.script.outcome}")

    async def _deliver(self, record: Record, event_type: str):
        "POST the signed event, retrying refused or lost deliveries with backoff, as OpenAI does."
        if not self.deliver_webhooks: return
        event = {"object": "event", "id": "evt_" + secrets.token_hex(12), "type": event_type,
                 "created_at": int(time.time()), "data": {"id": record.id}}
        body = json.dumps(event).encode()
        webhook_id = "wh_" + secrets.token_hex(12)
        for backoff in (0, *DELIVERY_BACKOFF_SECONDS):
            await asyncio.sleep(backoff)
            status = await self._post(body, signed_headers(self.secret, body, webhook_id))
            self.deliveries.append({"event": event, "status": status})
            if status and 200 <= status < 300: return
        log.warning("webhook %s for %s given up after %d attempts", webhook_id, record.id, 1 + len(DELIVERY_BACKOFF_SECONDS))

    async def _post(self, body: bytes, headers: dict) -> int | None:
        is_url = isinstance(self.webhook_target, str)
        transport = None if is_url else httpx2.ASGITransport(app=self.webhook_target)
        url = self.webhook_target if is_url else "http://127.0.0.1/api/webhook"
        try:
            async with httpx2.AsyncClient(transport=transport, timeout=10) as client:
                return (await client.post(url, content=body, headers=headers)).status_code
        except Exception as exc:  # any failed attempt is retried, as OpenAI does: not only httpx's own errors
            log.info("webhook delivery to %s failed: %s", url if is_url else "the app", type(exc).__name__)
            return None

    async def stop(self):
        "Cancel pending deliveries."
        for task in list(self._tasks): task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def wait_idle(self):
        "Wait until every scheduled delivery has ended (for tests)."
        while self._tasks: await asyncio.gather(*list(self._tasks), return_exceptions=True)


if __name__ == "__main__":
    import uvicorn

    from config import load_settings
    settings = load_settings()
    emulator = Emulator(settings.emulator_webhook_url, settings.webhook_secret or settings.generated_secret,
                        settings.demo_delay_seconds, settings.demo_webhooks)
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(emulator.app, host="127.0.0.1", port=settings.emulator_port, log_level="warning", timeout_graceful_shutdown=1)
