"""The only code that talks to OpenAI (or, in demo mode, to the emulator): create, retrieve, cancel, unwrap.

SDK retries, deliberately few: `create` does not retry, because the SDK would sleep through a
429's Retry-After (up to a minute) while the person waits; the error says when to try again,
and a retry with the same Idempotency-Key is safe. `retrieve` does not retry either: a webhook's
is redelivered by OpenAI when we answer 503, a status read is tried again by the next poll.
`cancel` retries once (the SDK reuses one Idempotency-Key, so that is safe): a click should stick.
"""
import logging
import re
from dataclasses import dataclass

import httpx2
import openai
from openai import AsyncOpenAI

log = logging.getLogger("openai_client")


class OpenAIError(Exception):
    """OpenAI refused or could not be reached; `status` is what our API answers, `message` is safe to show."""

    def __init__(self, status: int, message: str, kind: str, retry_after: str | None = None, not_found: bool = False):
        super().__init__(message)
        self.status, self.message, self.kind, self.retry_after, self.not_found = status, message, kind, retry_after, not_found


class WebhookRejected(Exception):
    "A webhook that failed verification; the message says why."


class WebhookNotConfigured(Exception):
    "No secret to verify webhooks with."


@dataclass
class ResponseState:
    """What the app keeps of an OpenAI response."""
    id: str
    status: str
    output_text: str | None
    error: str | None
    usage: dict | None


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret: text = text.replace(secret, "***")
    return re.sub(r"\b(sk-[A-Za-z0-9_\-*]{3})[A-Za-z0-9_\-*]+", r"\1***", text)


def _openai_message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
    return str(error.get("message") or exc.message)


def output_text_of(response: dict) -> str:
    "The text of the response's message outputs, as the SDK's `Response.output_text` joins it."
    return "".join(part.get("text") or "" for item in response.get("output") or [] if item.get("type") == "message"
                   for part in item.get("content") or [] if part.get("type") == "output_text")


def state_of(response: dict) -> ResponseState:
    "What we keep of a response, read from its JSON (the SDK's raw response: building its model costs ~40% of a retrieve)."
    status, error = response.get("status"), None
    if status == "failed":
        failure = response.get("error") or {}
        error = (f"OpenAI reported a failure: {failure.get('message')} ({failure.get('code')})" if failure.get("message")
                 else "OpenAI reported a failure without a message")
    elif status == "incomplete":
        error = f"The response stopped before the end: {(response.get('incomplete_details') or {}).get('reason') or 'no reason given'}"
    output_text = output_text_of(response) if status in ("completed", "incomplete") else None
    return ResponseState(response["id"], status, output_text or None, error, response.get("usage") or None)


class OpenAIGateway:
    """`AsyncOpenAI` with the app's key, base URL and webhook secret (in demo mode, those of the emulator)."""
    create_timeout, read_timeout, webhook_read_timeout = 20.0, 10.0, 5.0  # create ends well within Vercel's 30 s

    def __init__(self, api_key: str, base_url: str | None, webhook_secret: str, http_client: httpx2.AsyncClient | None = None):
        "`http_client` replaces the network (the emulator in demo mode and in tests)."
        self.api_key, self.webhook_secret = api_key, webhook_secret
        self.client = AsyncOpenAI(api_key=api_key, base_url=base_url or None, http_client=http_client,
                                  webhook_secret=webhook_secret or None, max_retries=0)

    def _fail(self, exc: Exception, doing: str) -> OpenAIError:
        "Turn an SDK exception into an OpenAIError whose message holds no secret."
        scrub = lambda text: _scrub(text, (self.api_key, self.webhook_secret))
        if isinstance(exc, openai.APITimeoutError):
            return OpenAIError(503, f"OpenAI did not answer in time while {doing} (it may have started anyway: "
                                    "check the OpenAI dashboard before trying again)", "openai_timeout")
        if isinstance(exc, openai.APIConnectionError):
            return OpenAIError(503, f"Could not reach OpenAI while {doing}: check the network or OPENAI_BASE_URL", "openai_unreachable")
        if not isinstance(exc, openai.APIStatusError):
            return OpenAIError(502, f"Unexpected error while {doing}: {type(exc).__name__}", "openai_error")
        said = scrub(_openai_message(exc))
        code = exc.status_code
        if code == 401:
            return OpenAIError(502, f"OpenAI rejected the API key (401) while {doing}: {said} Check OPENAI_API_KEY.", "openai_auth")
        if code == 403:
            return OpenAIError(502, f"OpenAI refused access (403) while {doing}: {said}", "openai_forbidden")
        if code == 404:
            return OpenAIError(502, f"OpenAI does not know it (404) while {doing}: {said}", "openai_not_found", not_found=True)
        if code == 429:
            retry_after = exc.response.headers.get("retry-after")
            wait = f" Retry after {retry_after} s." if retry_after else " Try again in a minute."
            return OpenAIError(429, f"OpenAI's rate limit or quota was hit (429) while {doing}: {said}{wait}", "openai_rate_limited", retry_after)
        if code >= 500:
            return OpenAIError(502, f"OpenAI had a server error ({code}) while {doing}: {said} Try again shortly.", "openai_server_error")
        return OpenAIError(502, f"OpenAI refused the request ({code}) while {doing}: {said}", "openai_refused")

    async def _call(self, doing: str, method, *args, **kwargs) -> ResponseState:
        "Call an SDK method through `with_raw_response` and read the response's JSON."
        try: raw = await method(*args, **kwargs)
        except openai.OpenAIError as exc: raise self._fail(exc, doing) from None
        try: return state_of(raw.http_response.json())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise OpenAIError(502, f"The answer while {doing} was not a Responses API response: check OPENAI_BASE_URL",
                              "openai_bad_answer") from None

    async def create(self, prompt: str, model: str, reasoning_effort: str | None = None, task_id: str = "") -> ResponseState:
        "Start a background response; the task id goes along as metadata and as the request's Idempotency-Key."
        extra = {"reasoning": {"effort": reasoning_effort}} if reasoning_effort else {}
        return await self._call("queueing the prompt", self.client.responses.with_raw_response.create, input=prompt,
                                model=model, background=True, store=True, timeout=self.create_timeout,
                                metadata={"task_id": task_id}, extra_headers={"Idempotency-Key": task_id}, **extra)

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
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise WebhookRejected(f"Malformed webhook: {type(exc).__name__}: {exc}"[:300]) from None
        data = getattr(event, "data", None)
        response_id = data.get("id") if isinstance(data, dict) else getattr(data, "id", None)
        return headers.get("webhook-id", ""), str(getattr(event, "type", "") or ""), response_id

    async def close(self):
        await self.client.close()
