"""What a Responses API response means for a task: its text, refusal, sources, reasoning summary, steps and usage.

Read from the response's JSON (the SDK's raw response: building its pydantic model cost ~40% of a retrieve).
"""
from dataclasses import dataclass, field

STEP_TYPES = {"web_search_call": "web_search", "file_search_call": "file_search", "mcp_call": "mcp",
              "code_interpreter_call": "code_interpreter"}


@dataclass
class ResponseState:
    id: str
    status: str
    output_text: str | None = None
    refusal: str | None = None
    error: str | None = None
    incomplete_reason: str | None = None
    reasoning_summary: str | None = None
    sources: list[dict] = field(default_factory=list)
    citations: list[list[int]] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    usage: dict | None = None
    task_id: str | None = None

    @property
    def web_searches(self) -> int: return sum(step["type"] == "web_search" for step in self.steps)

    def result(self, cost_usd: float | None) -> dict:
        "The task's result columns (store.RESULT_COLUMNS)."
        return {"output_text": self.output_text, "refusal": self.refusal, "error": self.error,
                "incomplete_reason": self.incomplete_reason, "reasoning_summary": self.reasoning_summary,
                "sources": self.sources or None, "citations": self.citations or None, "steps": self.steps or None, "usage": self.usage, "cost_usd": cost_usd}


def message_parts(response: dict, kind: str):
    for item in response.get("output") or []:
        if item.get("type") == "message":
            yield from (part for part in item.get("content") or [] if part.get("type") == kind)


def output_text_of(response: dict) -> str:
    "The text of the response's message outputs, joined as the SDK's `Response.output_text` joins it."
    return "".join(part.get("text") or "" for part in message_parts(response, "output_text"))


def sources_of(response: dict) -> tuple[list[dict], list[list[int]]]:
    """Each URL the answer cites, once, in the order of its first citation, with its title; and the citations as
    [end of the cited text in output_text, number of its source from 1]."""
    sources, citations, offset = {}, [], 0
    for part in message_parts(response, "output_text"):
        for note in part.get("annotations") or []:
            if note.get("type") != "url_citation" or not note.get("url"): continue
            if note["url"] not in sources: sources[note["url"]] = {"url": note["url"], "title": note.get("title") or note["url"]}
            if isinstance(note.get("end_index"), int):
                citations.append([offset + note["end_index"], list(sources).index(note["url"]) + 1])
        offset += len(part.get("text") or "")
    return list(sources.values()), citations


def summary_of(response: dict) -> str:
    return "\n\n".join(part.get("text") or "" for item in response.get("output") or [] if item.get("type") == "reasoning"
                       for part in item.get("summary") or [])


def step_of(item: dict) -> dict | None:
    "A tool call as a step a person can read: its type and what it looked for."
    kind = STEP_TYPES.get(item.get("type"))
    if kind is None: return None
    action = item.get("action") or {}
    detail = {"web_search": lambda: action.get("query") or action.get("url") or " ".join(action.get("queries") or []),
              "file_search": lambda: " · ".join(item.get("queries") or []),
              "mcp": lambda: f"{item.get('server_label')}: {item.get('name')}",
              "code_interpreter": lambda: (item.get("code") or "")[:200]}[kind]()
    return {"type": kind, "action": action.get("type"), "detail": detail or None}


def state_of(response: dict) -> ResponseState:
    "What the app keeps of a response."
    status = response.get("status")
    state = ResponseState(response["id"], status, usage=response.get("usage") or None,
                          task_id=(response.get("metadata") or {}).get("task_id"))
    if status == "failed":
        failure = response.get("error") or {}
        state.error = (f"OpenAI reported a failure: {failure.get('message')} ({failure.get('code')})" if failure.get("message")
                       else "OpenAI reported a failure without a message")
    if status == "incomplete":
        state.incomplete_reason = (response.get("incomplete_details") or {}).get("reason") or "unknown"
        state.error = f"The response stopped before the end ({state.incomplete_reason}): what it wrote until then is kept."
    if status in ("completed", "incomplete"):
        state.output_text = output_text_of(response) or None
        state.refusal = "".join(part.get("refusal") or "" for part in message_parts(response, "refusal")) or None
        state.reasoning_summary = summary_of(response) or None
        state.sources, state.citations = sources_of(response)
        state.steps = [step for item in response.get("output") or [] if (step := step_of(item))]
    return state
