"""FT components: the page, the prompt form and the task card."""
import html
import json
import secrets
import time

from fasthtml.common import (H1, A, Article, Body, Button, Details, Div, Fieldset, Footer, Form, Head, Header, Hidden,
                             Html, Input, Label, Legend, Li, Link, Main, Meta, NotStr, Ol, Option, P, Script, Section,
                             Select, Small, Span, Strong, Summary, Textarea, Title, to_xml)

from cache import BoundedCache
from config import Settings
from models import cost_usd, model_named
from progress import ProgressState, sse
from render import growing_markdown_html, growing_markdown_parts, grown_markdown_parts, markdown_html
from store import TERMINAL

HTMX_CONFIG = {
    "allowEval": False, "includeIndicatorStyles": False, "selfRequestsOnly": True,
    "responseHandling": [{"code": "204", "swap": False}, {"code": "[23]..", "swap": True},
                         {"code": "[45]..", "swap": True, "error": True}],
}
STATUS_LABELS = {"queued": "Queued", "in_progress": "Running", "completed": "Completed", "failed": "Failed",
                 "cancelled": "Cancelled", "incomplete": "Incomplete"}
EFFORT_ORDER = ("none", "minimal", "low", "medium", "high", "xhigh")
TOOL_LABELS = {"web_search": "Web search", "file_search": "File search (your vector stores)", "mcp": "MCP servers"}
STEP_LABELS = {"web_search": "Searched the web", "file_search": "Searched files", "mcp": "Called a tool",
               "code_interpreter": "Ran code"}


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60: return f"{seconds} s"
    if seconds < 3600: return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def timing(task: dict) -> str:
    "Elapsed time, and how long the task waited in OpenAI's queue when that is known."
    end = task["completed_at"] if task["status"] in TERMINAL and task["completed_at"] else time.time()
    verb = {"queued": "waiting for", "in_progress": "running for"}.get(task["status"], "took")
    said = f"{verb} {duration(end - task['created_at'])}"
    if task["started_at"] and task["status"] != "queued": said += f", {duration(task['started_at'] - task['created_at'])} of it queued"
    return said


def usage_note(task: dict):
    usage = task["usage"]
    if not usage: return None
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens", 0)
    cost = f" · ≈ ${task['cost_usd']:.4f} (estimate)" if task["cost_usd"] is not None else ""
    return Small(f"Tokens: {usage.get('input_tokens', 0)} in · {usage.get('output_tokens', 0)} out"
                 f"{f' ({reasoning} reasoning)' if reasoning else ''}{cost}", cls="task-usage")


def status_badge(status: str):
    return Span(STATUS_LABELS.get(status, status), cls=f"status status-{status}", data_status=status)


def answer(task: dict):
    "The answer rendered from Markdown, with numbered citation links, then its sources."
    sources = tuple((s["url"], s["title"]) for s in task["sources"] or [])
    html_text = markdown_html(task["output_text"], sources, tuple(map(tuple, task["citations"] or [])))
    return (Div(NotStr(html_text), cls="task-output"),
            Div(Small("Sources", cls="task-label"), Ol(*[Li(A(title, href=url, rel="noopener noreferrer nofollow"))
                                                         for url, title in sources]), cls="task-sources") if sources else None)


def task_result(task: dict):
    "What came back: the refusal, the error (an incomplete answer keeps what it wrote), the answer and its sources."
    return Div(
        Div(Strong("The model refused: "), task["refusal"], cls="task-refusal", role="alert") if task["refusal"] else None,
        Div(task["error"], cls="task-error", role="alert") if task["error"] else None,
        Small("Result", cls="task-label") if task["output_text"] else None,
        answer(task) if task["output_text"] else None,
        cls="task-result") if task["refusal"] or task["error"] or task["output_text"] else None


def reasoning_and_steps(task: dict):
    "The reasoning summary and the tool calls, collapsed."
    steps = task["steps"] or []
    return (Details(Summary("Reasoning summary"), Div(*summary_part(task["reasoning_summary"]), cls="task-summary"))
            if task["reasoning_summary"] else None,
            Details(Summary(f"{len(steps)} step{'s' if len(steps) != 1 else ''}"), Ol(*steps_part(steps), cls="task-steps"))
            if steps else None)


def cancel_button(task: dict):
    if task["status"] in TERMINAL or not task["response_id"]: return None
    return Button("Cancel", hx_post=f"/api/cancel/{task['id']}", hx_target=f"#task-{task['id']}", hx_swap="outerHTML",
                  cls="secondary outline cancel", hx_disabled_elt="this")


def card_header(task: dict, timing_text: str | None = None, live: bool = False):
    tools = f" · {', '.join(TOOL_LABELS.get(t, t) for t in task['tools'])}" if task["tools"] else ""
    badge = Span(status_badge(task["status"]), sse_swap="status", hx_swap="innerHTML") if live else status_badge(task["status"])
    since = {"data_elapsed_since": task["created_at"]} if live else {}
    return Header(badge, Small(f" {task['model']}{model_effort(task)}{tools} · ", Span(timing_text or timing(task), **since),
                               cls="task-meta"),
                  A("Open", href=f"/tasks/{task['id']}", cls="task-link"), cancel_button(task))


def prompt_details(task: dict):
    return Details(Summary(task["prompt"][:120] + ("…" if len(task["prompt"]) > 120 else "")),
                   Div(task["prompt"], cls="task-prompt"), cls="task-prompt-details")


def task_card(task: dict, timing_text: str | None = None):
    "A finished task: its answer, sources, summary, steps and usage."
    return Article(card_header(task, timing_text), prompt_details(task), *reasoning_and_steps(task), task_result(task),
                   usage_note(task), A("Export Markdown", href=f"/api/export/{task['id']}.md", cls="task-export"),
                   id=f"task-{task['id']}", cls="task", data_task_id=task["id"], data_status=task["status"])


def running_card(task: dict, progress: ProgressState):
    """A running task, drawn with its progress so far, then kept up to date by its progress stream (htmx's SSE
    extension): each part swaps in its own event, and `done` swaps in the finished card. If the stream fails,
    the card reloads itself from the status route (and tries the stream again) every 2 s: polling only then."""
    return Article(
        card_header(task, live=True), prompt_details(task),
        Details(Summary("Reasoning summary"), Div(*live_summary_part(progress.summary), sse_swap="reasoning_summary.delta",
                                                  hx_swap="innerHTML", cls="task-summary"), open=True),
        Details(Summary("Steps"), Ol(*steps_part(progress.steps), sse_swap="step", hx_swap="innerHTML", cls="task-steps"),
                open=True),
        Div(*answer_part(progress.text), sse_swap="output_text.delta", hx_swap="innerHTML settle:0ms", cls="task-live"),
        Small(cost_so_far(task, progress), sse_swap="answer.cost", hx_swap="innerHTML", cls="task-usage"),
        id=f"task-{task['id']}", cls="task running", data_task_id=task["id"], data_status=task["status"],
        hx_ext="sse", sse_connect=f"/api/events/{task['id']}?format=html&after={progress.last}", sse_close="done",
        sse_swap="done", hx_swap="outerHTML", hx_get=f"/api/status/{task['id']}", hx_trigger="htmx:sseError delay:2s")


def summary_part(summary: str, html=markdown_html):
    return (NotStr(html(summary)),) if summary else (Small("Nothing yet.", cls="muted"),)


def live_summary_part(summary: str): return summary_part(summary, growing_markdown_html)


def steps_part(steps: list[dict]):
    return tuple(Li(STEP_LABELS.get(step["type"], step["type"]), ": " if step.get("detail") else "", step.get("detail") or "")
                 for step in steps)


def answer_part(text: str):
    """The answer so far, rendered: its finished blocks, to which each batch of the stream adds those finished since
    (`answer.blocks`), and the block being written, which each batch replaces (`answer.tail`). The whole part is
    drawn again by `output_text.delta`; it settles at once, so that its new blocks take the very next batch."""
    if not text: return (Small("The answer appears here as it is written.", cls="muted"),)
    finished, written = growing_markdown_parts(text)
    return (Div(Div(NotStr(finished), sse_swap="answer.blocks", hx_swap="beforeend", cls="task-blocks"),
                Div(NotStr(written), sse_swap="answer.tail", hx_swap="innerHTML", cls="task-tail"), cls="task-output"),)


def cost_so_far(task: dict, progress: ProgressState) -> str:
    """What the run has cost so far: an estimate from the model's price, its web searches, and the text written (about
    4 characters a token; reasoning tokens are not seen until the end)."""
    searches = sum(step["type"] == "web_search" for step in progress.steps)
    so_far = cost_usd(model_named(task["model"]), {"input_tokens": len(task["prompt"]) // 4,
                                                   "output_tokens": (len(progress.text) + len(progress.summary)) // 4}, searches)
    return f"≈ ${so_far:.4f} so far (estimate)" if so_far is not None else ""


def answer_events(events, state: ProgressState, live: bool) -> list[str]:
    """The answer's events of a batch: live, what it adds to the answer the viewer shows, or the answer whole when it
    cannot just grow; replayed, the answer whole, even if the replay brings no text (its viewer may show anything,
    from nothing to more than the replay holds: a stream resumed elsewhere, or cut between two events of a batch)."""
    def whole(): return [sse("output_text.delta", to_xml(answer_part(state.text)), state.last)]
    if not live: return whole() if state.text else []
    added = sum(len(event.data["delta"]) for event in events if event.kind == "output_text.delta")
    before = state.text[:len(state.text) - added]
    grown = grown_markdown_parts(before, state.text) if before else None
    if grown is None: return whole()
    finished, written = grown
    blocks = [sse("answer.blocks", finished, state.last)] if finished else []
    return [*blocks, sse("answer.tail", written, state.last)]


def progress_html(events, state: ProgressState, task: dict, ended: bool, live: bool = False) -> bytes:
    """The page's progress stream: each changed part of a running card as HTML (the answer as `answer_events` says,
    and its running cost, also when a step was made), and `done` as the finished card."""
    if ended: return sse("done", card_html(task), state.last + 1).encode()
    kinds = {event.kind for event in events}
    parts = {"status": lambda: status_badge(state.status), "reasoning_summary.delta": lambda: live_summary_part(state.summary),
             "step": lambda: steps_part(state.steps)}
    chunks = [sse(kind, to_xml(draw()), state.last) for kind, draw in parts.items() if kind in kinds]
    if "output_text.delta" in kinds or not live: chunks += answer_events(events, state, live)
    if kinds & {"output_text.delta", "step"}: chunks.append(sse("answer.cost", cost_so_far(task, state), state.last))
    return "".join(chunks).encode()


def running_card_html(task: dict, progress: ProgressState) -> str:
    "A running card as HTML, rendered once per state of the task and of its progress (its clock ticks in the page)."
    key = (task["id"], task["updated_at"], task["status"], progress.last)
    return _cards.get(key) or _cards.put(key, to_xml(running_card(task, progress)))


def card(task: dict, progress: ProgressState | None = None):
    "A task's card: the running card while it runs (given its progress), else the finished one."
    return running_card(task, progress) if progress is not None and task["status"] not in TERMINAL else task_card(task)


TIMING_SLOT = "timing-" + secrets.token_hex(8)
_cards = BoundedCache(max_bytes=32 * 1024 * 1024)


def card_html(task: dict) -> str:
    """A finished card (or a running one without its progress) as HTML. Each state of a task is rendered once; only
    its timing text, which moves while it runs, is filled in per request."""
    key = (task["id"], task["updated_at"], task["status"])
    template = _cards.get(key) or _cards.put(key, to_xml(task_card(task, timing_text=TIMING_SLOT)))
    return template.replace(TIMING_SLOT, html.escape(timing(task)), 1)


def model_effort(task: dict) -> str:
    return f" ({task['reasoning_effort']} reasoning)" if task["reasoning_effort"] else ""


def model_picker(models: tuple[str, ...], chosen: str | None = None):
    if len(models) == 1: return Hidden(name="model", value=models[0])
    return Label("Model", Select(*[Option(m, value=m, selected=m == chosen) for m in models], name="model"))


def effort_picker(models: tuple[str, ...]):
    "Every effort some model takes (the server says which the chosen model does not)."
    efforts = {effort for name in models for effort in model_named(name).efforts}
    return Label("Reasoning effort", Select(Option("model default", value=""),
                                            *[Option(e, value=e) for e in EFFORT_ORDER if e in efforts], name="reasoning_effort"))


def tool_choices(tools: tuple[str, ...]):
    "The tools a prompt may use; with none ticked, a deep-research model searches the web (it needs a data source)."
    return Fieldset(Legend("Tools (none ticked: web search for deep research, no tools for other models)"),
                    *[Label(Input(type="checkbox", name="tools", value=tool), TOOL_LABELS[tool]) for tool in tools],
                    cls="form-tools")


def limits_picker():
    return Details(Summary("Limits (deep research's cost control)"),
                   Div(Label("Max output tokens", Input(type="number", name="max_output_tokens", min=16, max=1_000_000)),
                       Label("Max tool calls", Input(type="number", name="max_tool_calls", min=1, max=1000)),
                       cls="grid"), cls="form-limits")


def prompt_form(settings: Settings, chosen_model: str | None = None, **attrs):
    "The prompt form (the last model chosen kept); every render carries a fresh idempotency key, so a double submit queues once."
    return Form(
        Label("Prompt", Textarea(name="prompt", rows=8, required=True, maxlength=settings.max_prompt_chars,
                                 placeholder="A deep-research question, a long report to write…")),
        Div(model_picker(settings.allowed_models, chosen_model), effort_picker(settings.allowed_models), cls="form-options grid"),
        tool_choices(settings.tools),
        limits_picker(),
        Hidden(name="idempotency_key", value=secrets.token_urlsafe(16)),
        Button("Queue Task", type="submit"),
        id="prompt-form", hx_post="/api/queue", hx_target="#tasks", hx_swap="afterbegin",
        hx_disabled_elt="find button", **attrs)


def spend_note(spent: float | None, budget: float | None):
    "Today's estimated spend against the owner's daily budget."
    if budget is None: return None
    return P(Small(f"Spent today (estimated, UTC): ${spent:.2f} of your ${budget:.2f} daily budget"), cls="spend", id="spend")


def form_error(message: str = "", oob: bool = False):
    return Div(message, id="form-error", role="alert" if message else None, cls="form-error" if message else None,
               hx_swap_oob="true" if oob else None)


def missing_task(task_id: str):
    return Article(P(f"Task {task_id[:80]} is unknown here: it may belong to another database."), cls="task missing")


def demo_banner():
    return P(Strong("Demo mode. "), "No OPENAI_API_KEY is set, so prompts go to a local emulator of the OpenAI "
             "Responses API and the answers are made up. Set OPENAI_API_KEY to run them on OpenAI.",
             cls="demo-banner", id="demo-banner")


def task_list(tasks: list[dict], progress: dict[str, ProgressState]):
    return Section(*[card(t, progress.get(t["id"])) for t in tasks], id="tasks", aria_live="polite")


def exposed_banner():
    return P(Strong("This app is open to anyone. "), "It runs with your OpenAI key on a public host and "
             "APP_ACCESS_TOKENS is not set: anyone with its URL can spend your key and read every result. "
             "Set APP_ACCESS_TOKENS.", cls="exposed-banner", role="alert")


def signout_form():
    return Form(Button("Sign out", type="submit", cls="secondary outline"), method="post", action="/signout", cls="signout")


def layout(*content):
    "The HTML document: only the app's own scripts and styles (the CSP allows nothing else)."
    return Html(
        Head(Title("Background prompts"), Meta(charset="utf-8"),
             Meta(name="viewport", content="width=device-width, initial-scale=1"),
             Meta(name="htmx-config", content=json.dumps(HTMX_CONFIG)),
             Link(rel="stylesheet", href="/static/vendor/pico.min.css"),
             Link(rel="stylesheet", href="/static/app.css"), Link(rel="icon", href="data:,"),
             Script(src="/static/vendor/htmx.min.js", defer=True), Script(src="/static/vendor/sse.js", defer=True),
             Script(src="/static/app.js", defer=True)),
        Body(Main(*content, cls="container")),
        lang="en")


def page(tasks: list[dict], progress: dict[str, ProgressState], settings: Settings, exposed=False, signed_in=False,
         spent: float | None = None):
    return layout(
        Header(H1("Background prompts"),
               P("Queue a long prompt as an OpenAI background response. You may close this tab: "
                 "the result is kept, and shown here when it is ready."),
               Button("Notify me when a task ends", type="button", id="notify", cls="secondary outline notify", hidden=True),
               signout_form() if signed_in else None),
        demo_banner() if settings.demo else None,
        exposed_banner() if exposed else None,
        spend_note(spent, settings.daily_budget_usd),
        prompt_form(settings),
        form_error(),
        task_list(tasks, progress),
        Footer(Small(A("health", href="/health"), " · ", "JSON API: POST /api/queue, GET /api/status/{id}, GET /api/tasks")))


def task_page(task: dict, progress: ProgressState | None):
    "One task: its whole result, sources, summary, steps, usage and cost, or its progress while it runs."
    return layout(Header(H1("Background prompts"), P(A("← All tasks", href="/"))), Div(card(task, progress), cls="task-page"))


def signin_page(error: str = ""):
    return layout(
        Header(H1("Background prompts"), P("This app is private: sign in with an access token.")),
        Form(Label("Access token", Input(type="password", name="token", required=True, autocomplete="current-password")),
             Div(error, cls="form-error", role="alert") if error else None,
             Button("Sign in", type="submit"), method="post", action="/signin"))
