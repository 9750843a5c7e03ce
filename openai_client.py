"""The only code that talks to OpenAI (or, in demo mode, to the emulator): create, retrieve, cancel, unwrap.

SDK retries, deliberately few: `create` does not retry, because the SDK would sleep through a
429's Retry-After (up to two minutes) while the person waits, and OpenAI documents no idempotency
key for it, so a retry could be billed twice; the error says when to try again. `retrieve` does not
retry either: a webhook's is redelivered by OpenAI when we answer 503, a status read is tried again
by the next poll. `cancel` retries once (cancelling twice is harmless): a click should stick.
"""
import math
import re

import httpx2
import openai
from openai import AsyncOpenAI

from results import ResponseState, state_of
from telemetry import OPENAI_CALLS, OPENAI_ERRORS

OPERATIONS = {"queueing the prompt": "create", "checking the response": "retrieve", "cancelling the response": "cancel",
              "resuming the response's stream": "stream", "reading the response's stream": "stream"}


class OpenAIError(Exception):
    """OpenAI refused or could not be reached; `status` is what our API answers, `message` is safe to show."""

    def __init__(self, status: int, message: str, kind: str, retry_after: str | None = None, not_found: bool = False):
        super().__init__(message)
        self.status, self.message, self.kind, self.retry_after, self.not_found = status, message, kind, retry_after, not_found


class WebhookRejected(Exception):
    "A webhook that failed verification; the message says why."


class WebhookNotConfigured(Exception):
    "No secret to verify webhooks with."


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret: text = text.replace(secret, "***")
    return re.sub(r"\b(sk-[A-Za-z0-9_\-*]{3})[A-Za-z0-9_\-*]+", r"\1***", text)


def _openai_error(exc: openai.APIError) -> dict:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    return error if isinstance(error, dict) else {}


def go_duration_seconds(text: str) -> float | None:
    "Seconds in a Go-style duration as OpenAI's x-ratelimit-reset-* headers write them: 20ms, 1s, 6m0s, 1h2m3.5s."
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text or "")
    if not parts or "".join(n + u for n, u in parts) != text.strip(): return None
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def retry_after_seconds(headers) -> int | None:
    "When to try again, in whole seconds, from OpenAI's retry-after-ms, retry-after or x-ratelimit-reset-* headers."
    candidates = []
    if (ms := headers.get("retry-after-ms")) and re.fullmatch(r"\d+(\.\d+)?", ms): candidates.append(float(ms) / 1000)
    elif (seconds := headers.get("retry-after")) and re.fullmatch(r"\d+(\.\d+)?", seconds): candidates.append(float(seconds))
    else: candidates += [d for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
                         if (d := go_duration_seconds(headers.get(name, ""))) is not None]
    return max(1, math.ceil(max(candidates))) if candidates else None


class OpenAIGateway:
    """`AsyncOpenAI` with the app's key, base URL and webhook secret (in demo mode, those of the emulator)."""
    create_timeout, read_timeout, webhook_read_timeout = 20.0, 10.0, 5.0
    stream_read_timeout = 90.0  # OpenAI may be silent a long while between a deep research run's events

    def __init__(self, api_key: str, base_url: str | None, webhook_secret: str, http_client: httpx2.AsyncClient | None = None):
        "`http_client` replaces the network (the emulator in demo mode and in tests)."
        self.api_key, self.webhook_secret = api_key, webhook_secret
        self.client = AsyncOpenAI(api_key=api_key, base_url=base_url or None, http_client=http_client,
                                  webhook_secret=webhook_secret or None, max_retries=0)

    def _fail(self, exc: Exception, doing: str) -> OpenAIError:
        "Turn an SDK exception into an OpenAIError whose message holds no secret (DESIGN.md's contract), and count it."
        error = self._error_of(exc, doing)
        OPENAI_ERRORS.labels(OPERATIONS[doing], error.kind).inc()
        return error

    def _error_of(self, exc: Exception, doing: str) -> OpenAIError:
        if isinstance(exc, openai.APITimeoutError):
            return OpenAIError(503, f"OpenAI did not answer in time while {doing} (it may have started anyway: "
                                    "check the OpenAI dashboard before trying again)", "openai_timeout")
        if isinstance(exc, openai.APIConnectionError):
            return OpenAIError(503, f"Could not reach OpenAI while {doing}: check the network or OPENAI_BASE_URL",
                               "openai_unreachable")
        error = _openai_error(exc) if isinstance(exc, openai.APIError) else {}
        said = _scrub(str(error.get("message") or getattr(exc, "message", "") or type(exc).__name__),
                      (self.api_key, self.webhook_secret))
        if not isinstance(exc, openai.APIStatusError):
            return OpenAIError(502, f"OpenAI reported an error while {doing}: {said}", "openai_error")
        return self._status_error(exc.status_code, error, said, exc.response.headers, doing)

    @staticmethod
    def _status_error(code: int, error: dict, said: str, headers, doing: str) -> OpenAIError:
        if code in (400, 404, 422):
            return OpenAIError(400, f"OpenAI refused the request while {doing}: {said}", "openai_bad_request",
                               not_found=code == 404)
        if code in (401, 403):
            return OpenAIError(502, f"OpenAI refused the API key ({code}) while {doing}: {said} Check OPENAI_API_KEY and "
                                    "the key's project permissions.", "openai_auth")
        if code == 429 and "insufficient_quota" in (error.get("code"), error.get("type")):
            return OpenAIError(503, f"The OpenAI account is out of credit (429 insufficient_quota) while {doing}: {said} "
                                    "Add credit or raise the project's spend limit in the OpenAI dashboard; retrying will "
                                    "not help until then.", "openai_quota")
        if code == 429:
            wait = retry_after_seconds(headers)
            hint = f" Retry after {wait} s." if wait else " Try again in a minute."
            return OpenAIError(429, f"OpenAI's rate limit was hit (429) while {doing}: {said}{hint}", "openai_rate_limited", wait)
        if code >= 500:
            return OpenAIError(502, f"OpenAI had a server error ({code}) while {doing}: {said} Try again shortly.",
                               "openai_server_error")
        return OpenAIError(502, f"OpenAI answered {code} while {doing}: {said}", "openai_error")

    async def _call(self, doing: str, method, *args, **kwargs) -> ResponseState:
        "Call an SDK method through `with_raw_response` and read the response's JSON."
        OPENAI_CALLS.labels(OPERATIONS[doing]).inc()
        try: raw = await method(*args, **kwargs)
        except openai.OpenAIError as exc: raise self._fail(exc, doing) from None
        try: return state_of(raw.http_response.json())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise OpenAIError(502, f"The answer while {doing} was not a Responses API response: check OPENAI_BASE_URL",
                              "openai_bad_answer") from None

    async def create(self, request: dict):
        """Start a background response that streams (`request`: the create parameters, tasks builds them).
        Returns its state, read from the stream's first event, and the stream, open on the events that follow."""
        OPENAI_CALLS.labels("create").inc()
        try:
            stream = await self.client.responses.create(**request, background=True, store=True, stream=True,
                                                        timeout=self.create_timeout)
            first = await anext(stream.__aiter__(), None)
        except openai.OpenAIError as exc: raise self._fail(exc, "queueing the prompt") from None
        response = getattr(first, "response", None)
        if response is None or not getattr(response, "id", None):
            await stream.close()
            raise OpenAIError(502, "The answer while queueing the prompt was not a Responses API response: check OPENAI_BASE_URL",
                              "openai_bad_answer")
        return state_of(response.model_dump(exclude_none=True)), stream

    async def resume(self, response_id: str, after: int):
        "The response's stream again, from the event after sequence number `after`."
        OPENAI_CALLS.labels("stream").inc()
        try: return await self.client.responses.retrieve(response_id, stream=True, starting_after=after,
                                                         timeout=self.stream_read_timeout)
        except openai.OpenAIError as exc: raise self._fail(exc, "resuming the response's stream") from None

    async def events(self, stream):
        "The events of a stream (OpenAIError if it breaks); the stream is closed however the reading ends."
        try:
            async for event in stream: yield event
        except openai.OpenAIError as exc: raise self._fail(exc, "reading the response's stream") from None
        finally: await stream.close()

    async def retrieve(self, response_id: str, for_webhook: bool = False) -> ResponseState:
        return await self._call("checking the response", self.client.responses.with_raw_response.retrieve, response_id,
                                timeout=self.webhook_read_timeout if for_webhook else self.read_timeout)

    async def cancel(self, response_id: str) -> ResponseState:
        return await self._call("cancelling the response", self.client.with_options(max_retries=1).responses.with_raw_response.cancel,
                                response_id, timeout=self.read_timeout)

    def unwrap(self, body: bytes, headers) -> tuple[str, str, str | None]:
        "Verify a webhook and return (webhook id, event type, response id); WebhookRejected when it fails."
        if not self.webhook_secret:
            raise WebhookNotConfigured("OPENAI_WEBHOOK_SECRET is not set: copy it from the webhook's page in the OpenAI dashboard")
        try:
            event = self.client.webhooks.unwrap(body, headers, secret=self.webhook_secret)
        except openai.InvalidWebhookSignatureError as exc: raise WebhookRejected(str(exc)) from None
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
            raise WebhookRejected(f"Malformed webhook: {exc}"[:300]) from None
        data = getattr(event, "data", None)
        response_id = data.get("id") if isinstance(data, dict) else getattr(data, "id", None)
        return headers.get("webhook-id", ""), str(getattr(event, "type", "") or ""), response_id

    async def close(self):
        await self.client.close()
