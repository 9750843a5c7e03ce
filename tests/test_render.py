"""Model output is Markdown, and nothing in it can run in the page."""
import random
import re

import pytest
from bs4 import BeautifulSoup

import ui
from emulator import demo_answer
from progress import ProgressEvent, ProgressState
from render import blocks, growing_markdown_html, markdown_html
from store import new_task_row

XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](  javascript:alert(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
    "![x](javascript:alert(1))",
    '<a href="javascript:alert(1)">x</a>',
    '<div hx-get="/api/queue" hx-trigger="load">x</div>',
    '<button hx-post="/api/cancel/x">x</button>',
    "<iframe src=//evil.example></iframe>",
    "<object data=x></object><embed src=x>",
    '<a href="x" onclick="alert(1)">x</a>',
    "<style>body{display:none}</style>",
    "<form action=/api/queue><input name=prompt></form>",
    "[x](vbscript:msgbox(1))",
    '<math><mi xlink:href="javascript:alert(1)">x</mi></math>',
    "`<script>alert(1)</script>`",
    "```html\n<script>alert(1)</script>\n```",
    "<<script>script>alert(1)<</script>/script>",
    '[a](https://example.com "title" onmouseover="alert(1)")',
]


@pytest.mark.parametrize("render", [markdown_html, growing_markdown_html])
@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_nothing_executable_survives(payload, render):
    html = render(payload).lower()
    assert "<script" not in html and "<iframe" not in html and "<svg" not in html and "<style" not in html
    assert "<form" not in html and "<input" not in html and "<img" not in html and "<object" not in html
    assert not re.search(r"<[^>]*\son\w+\s*=", html), html
    assert not re.search(r"<[^>]*\shx-", html), html
    for tag in re.findall(r"<[^>]+>", html):
        assert "javascript:" not in tag and "data:" not in tag and "vbscript:" not in tag, tag
    for href in re.findall(r'<a\s[^>]*href="([^"]*)"', html):
        assert href.startswith(("http://", "https://", "mailto:")), href


def test_markdown_is_rendered():
    html = markdown_html("# Report\n\n**bold** and *em*\n\n- one\n- two\n\n[docs](https://example.com)\nline\nbreak")
    assert "<h1>Report</h1>" in html and "<strong>bold</strong>" in html and "<li>one</li>" in html
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">docs</a>' in html
    assert "line<br>" in html


def test_raw_text_stays_available_in_the_api_shape():
    text = "<b>raw</b> **md**"
    assert "&lt;b&gt;raw&lt;/b&gt;" in markdown_html(text)


REPORT = """# Tides

The **Moon** pulls the oceans [NOAA](https://oceanservice.noaa.gov/).
A second line.

1. Spring tides

   come at new and full moon.

2. Neap tides

- tight
- list

```python
high = 1

low = 0
```

    indented code

> quoted

| tide | when |
| --- | --- |
| spring | full moon |

---
The end.
"""


FENCES = ["````md\n```py\nx = 1\n\ny = 2\n```\n````\n\nAfter.", "~~~\n```\n\n# not a heading\n~~~\n\nAfter.",
          "```py``` is inline\n\n# Heading\n\n```\ncode\n\nmore\n```\n\nAfter."]


@pytest.mark.parametrize("text", [REPORT, *FENCES])
def test_an_answer_rendered_as_it_grows_is_rendered_as_whole_at_every_length(text):
    "Rendered block by block while it is written, the answer reads exactly as rendered whole, at any length."
    assert len(blocks(text)) >= (6 if text == REPORT else 2), "finished blocks are rendered once and kept"
    for end in range(1, len(text) + 1):
        assert growing_markdown_html(text[:end]) == markdown_html(text[:end]), text[:end]


def swap_stream(card, stream: bytes):
    "Swap each event of a progress stream into a drawn card as htmx's SSE extension does (`innerHTML`, `beforeend`)."
    for message in filter(None, stream.decode().split("\n\n")):
        lines = [line.partition(": ") for line in message.split("\n") if line]
        kind = next(value for field, _, value in lines if field == "event")
        target = card.find(attrs={"sse-swap": kind})
        if target["hx-swap"].split()[0] == "innerHTML": target.clear()
        target.extend(list(BeautifulSoup("\n".join(v for f, _, v in lines if f == "data"), "html.parser").contents))


def shown_answer(card) -> str:
    return "".join(map(str, card.select_one(".task-blocks").contents + card.select_one(".task-tail").contents))


@pytest.mark.parametrize("text", [REPORT, *FENCES, demo_answer("Tides [demo:long]", 3)[0]])
def test_the_pages_stream_shows_the_answer_as_rendered_whole_after_every_batch(text):
    """A running card, then its live batches (each adding the blocks finished since and the block being written; a
    short answer grows a character a batch), and every seventh batch a replay from three batches back (as to a viewer
    whose stream reconnected with the page's first `after`): the card shows the answer as rendered whole after each."""
    task = new_task_row(id="task_streamedanswer1", owner="o", account="o", prompt="Tides", model="o4-mini-deep-research",
                        status="in_progress", tools=["web_search"])
    sizes = [1] if len(text) < 1000 else [1, 3, 17, 60, 200]
    state, texts, pick = ProgressState(), [""], random.Random(7)
    card = BeautifulSoup(ui.running_card_html(task, state), "html.parser")
    while len(state.text) < len(text):
        grown = text[:len(state.text) + pick.choice(sizes)]
        state.apply([ProgressEvent(len(texts), "output_text.delta", {"delta": grown[len(state.text):]})])
        texts.append(grown)
        replayed_from = texts[-4] if len(texts) % 7 == 0 else texts[-2]
        swap_stream(card, ui.progress_html([ProgressEvent(state.last, "output_text.delta", {"delta": grown[len(replayed_from):]})],
                                           state, task, False, live=replayed_from == texts[-2]))
        assert shown_answer(card) == str(BeautifulSoup(growing_markdown_html(grown), "html.parser")), grown
    assert card.select_one(".task-usage").get_text().endswith("so far (estimate)")


def test_a_replay_sets_a_page_that_shows_more_back_to_what_it_holds():
    """A page showing more of the answer than its stream's replay holds (htmx reconnected with the page's first
    `after` to a server whose follower is behind), even a replay with no answer event in it: the answer is drawn as
    the replay holds it, so that the next live batch adds to the right answer."""
    task = new_task_row(id="task_replayedbehind1", owner="o", account="o", prompt="Tides", model="o4-mini-deep-research",
                        status="in_progress")
    ahead, behind = ProgressState(), ProgressState()
    ahead.apply([ProgressEvent(3, "output_text.delta", {"delta": "One.\n\nTwo.\n\nThr"})])
    behind.apply([ProgressEvent(1, "output_text.delta", {"delta": "One.\n\n"}), ProgressEvent(2, "step", {"type": "web_search"})])
    card = BeautifulSoup(ui.running_card_html(task, ahead), "html.parser")
    swap_stream(card, ui.progress_html([ProgressEvent(2, "step", {"type": "web_search"})], behind, task, False, live=False))
    assert shown_answer(card) == str(BeautifulSoup(growing_markdown_html("One.\n\n"), "html.parser"))
    batch = [ProgressEvent(3, "output_text.delta", {"delta": "Two.\n\nThr"})]
    behind.apply(batch)
    swap_stream(card, ui.progress_html(batch, behind, task, False, live=True))
    assert shown_answer(card) == str(BeautifulSoup(growing_markdown_html("One.\n\nTwo.\n\nThr"), "html.parser"))
