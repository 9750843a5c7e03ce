"""Model output as safe HTML: Markdown (markdown-it-py, `js-default`: raw HTML off), then sanitised by nh3."""
from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

ALLOWED_TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre",
                "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td"}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
ALLOWED_URL_SCHEMES = {"http", "https", "mailto"}

_markdown = MarkdownIt("js-default", {"breaks": True})


@lru_cache(maxsize=512)
def markdown_html(text: str) -> str:
    "HTML safe to put in a page: no script, no event handler, no javascript: or data: URL, no hx-* attribute."
    return nh3.clean(_markdown.render(text), tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES,
                     url_schemes=ALLOWED_URL_SCHEMES, link_rel="noopener noreferrer nofollow")
