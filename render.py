"""Model output as safe HTML: Markdown (markdown-it-py, `js-default`: raw HTML off) with numbered citation links,
then sanitised by nh3; and an answer as a Markdown file with its numbered sources."""
import re
from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

ALLOWED_TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre",
                "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "sup"}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
ALLOWED_URL_SCHEMES = {"http", "https", "mailto"}

_markdown = MarkdownIt("js-default", {"breaks": True})
_cleaner = nh3.Cleaner(tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes=ALLOWED_URL_SCHEMES,
                       link_rel="noopener noreferrer nofollow")
BLANK_LINES = re.compile(r"(\n[ \t]*\n)")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$", re.M)
CONTINUES = re.compile(r"[ \t]|([-*+]|[0-9]{1,9}[.)])([ \t]|$)")


def with_citations(text: str, sources: tuple[tuple[str, str], ...], citations: tuple[tuple[int, int], ...]) -> str:
    "The Markdown with a numbered link to its source after each cited passage: `[[2]](url)`."
    for end, number in sorted(set(citations), reverse=True):
        if 0 < end <= len(text) and 0 < number <= len(sources):
            text = f"{text[:end]}[[{number}]]({_link(sources[number - 1][0])}){text[end:]}"
    return text


def _link(url: str) -> str:
    return url.replace("(", "%28").replace(")", "%29").replace(" ", "%20")


@lru_cache(maxsize=512)
def markdown_html(text: str, sources: tuple[tuple[str, str], ...] = (), citations: tuple[tuple[int, int], ...] = ()) -> str:
    "HTML safe to put in a page: no script, no event handler, no javascript: or data: URL, no hx-* attribute."
    return _safe_html(with_citations(text, sources, citations))


def _safe_html(text: str) -> str:
    return _cleaner.clean(_markdown.render(text))


def growing_markdown_html(text: str) -> str:
    """Markdown still being written, as `markdown_html` makes it, rendered block by block so that each finished block
    is rendered once (a 16 KB answer costs about 12 ms to render whole). Blocks are cut at blank lines, except in a
    code fence and before an indented line or a list item; until the text is whole, a reference-style link defined
    in a later block shows as text."""
    return "".join(growing_markdown_parts(text))


def growing_markdown_parts(text: str) -> tuple[str, str]:
    "`growing_markdown_html` in two: the HTML of the finished blocks, and of the block being written."
    *finished, written = blocks(text)
    return "".join(map(_finished_block_html, finished)), _safe_html(written)


def grown_markdown_parts(before: str, text: str) -> tuple[str, str] | None:
    """What `text` adds to `before` (a text it grew from) in `growing_markdown_parts`: the HTML of the blocks finished
    since, and of the block being written; None when a block finished in `before` is not in `text` (a blank line
    that turned out to continue its block), so that the whole must be drawn again."""
    *finished_before, _ = blocks(before)
    *finished, written = blocks(text)
    if finished[:len(finished_before)] != finished_before: return None
    return "".join(map(_finished_block_html, finished[len(finished_before):])), _safe_html(written)


@lru_cache(maxsize=4096)
def _finished_block_html(block: str) -> str: return _safe_html(block)


@lru_cache(maxsize=64)
def blocks(text: str) -> tuple[str, ...]:
    """Markdown cut at the blank lines that surely end a block: outside code fences, not before a continuation. The
    last texts cut are kept: each batch of a growing answer cuts again the text it grew from (157 µs at 14 KB)."""
    parts = BLANK_LINES.split(text)
    cut, fence = [parts[0]], open_fence(parts[0], None)
    for gap, part in zip(parts[1::2], parts[2::2]):
        if fence or CONTINUES.match(part): cut[-1] += gap + part
        else: cut.append(part)
        fence = open_fence(part, fence)
    return tuple(cut)


def open_fence(text: str, fence: str | None) -> str | None:
    """The code fence still open after `text` (its backticks or tildes), given the one open before it: a fence is
    closed by a line of at least as many of its character and nothing else; a backtick fence's info string holds
    no backtick (CommonMark)."""
    for mark, rest in FENCE.findall(text):
        if fence is None and not (mark[0] == "`" and "`" in rest): fence = mark
        elif fence and mark[0] == fence[0] and len(mark) >= len(fence) and not rest.strip(): fence = None
    return fence


def markdown_export(task: dict) -> str:
    "A task as a Markdown file: its prompt, its answer with numbered citations, and the numbered sources."
    sources = tuple((s["url"], s["title"]) for s in task["sources"] or [])
    answer = task["output_text"] or task["refusal"] or task["error"] or "(no answer yet)"
    if task["output_text"]: answer = with_citations(answer, sources, tuple(map(tuple, task["citations"] or [])))
    quoted = "\n".join("> " + line for line in task["prompt"].splitlines())
    parts = [f"# {task['prompt'].strip().splitlines()[0][:80]}", f"Model: {task['model']} · status: {task['status']}",
             "## Prompt", quoted, "## Answer", answer]
    if sources: parts += ["## Sources", "\n".join(f"{n}. [{title}]({_link(url)})" for n, (url, title) in enumerate(sources, 1))]
    return "\n\n".join(parts) + "\n"
