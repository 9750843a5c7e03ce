"""Model output is Markdown, and nothing in it can run in the page."""
import re

import pytest

from render import blocks, growing_markdown_html, markdown_html

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
