"""Watching a deep-research task in a real browser: its summary, searches and growing answer over one stream, no polling
meanwhile, a reload that keeps what was shown, and the end announced in the tab's title."""
import re
import time

import pytest
from playwright.sync_api import expect

from tests.browser.test_page import assert_stayed_local

pytestmark = pytest.mark.browser
QUESTION = "How do tides form, and why do some bays have one high tide a day?"


def queue_deep_research(page):
    page.locator("select[name=model]").select_option("o4-mini-deep-research")
    page.locator("textarea[name=prompt]").fill(QUESTION)
    page.get_by_role("button", name="Queue Task").click()
    return page.locator("#tasks article.task").first


def answer_length(card) -> int:
    return len(card.locator(".task-live .task-output").inner_text()) if card.locator(".task-live .task-output").count() else 0


def test_a_running_deep_research_task_shows_its_summary_searches_and_growing_answer(visit_server):
    visitor = visit_server(DEMO_DELAY_SECONDS="8")
    page = visitor.open()
    card = queue_deep_research(page)
    expect(card.locator("span.status")).to_have_text("Running", timeout=10_000)
    expect(card.locator(".task-summary")).to_contain_text("Planning the answer", timeout=10_000)
    expect(card.locator(".task-steps li")).to_have_count(3, timeout=10_000)
    expect(card.locator(".task-steps li").first).to_contain_text("Searched the web")
    expect(card.locator(".task-live .task-output")).to_contain_text("[Demo mode]", timeout=10_000)
    first = answer_length(card)
    page.wait_for_function("n => (document.querySelector('.task-live .task-output')?.innerText.length || 0) > n", arg=first)
    expect(card.locator(".task-usage")).to_contain_text("so far (estimate)")
    streaming_polls = [url for url in visitor.requests if "/api/status/" in url]

    finished = page.locator("#tasks article.task").first
    expect(finished.locator("span.status")).to_have_text("Completed", timeout=15_000)
    expect(finished.locator(".task-sources li")).to_have_count(3)
    expect(finished.locator(".task-output a", has_text="[1]")).to_have_count(1)
    expect(finished.get_by_role("link", name="Export Markdown")).to_be_visible()
    expect(page).to_have_title("(1 done) Background prompts")
    assert streaming_polls == [], f"the card polled while its stream was open: {streaming_polls}"
    assert sum("/api/events/" in url for url in visitor.requests) == 1, "one stream for the whole run"
    assert_stayed_local(visitor)


def test_a_reload_mid_run_shows_at_least_what_was_there_and_goes_on(visit_server):
    visitor = visit_server(DEMO_DELAY_SECONDS="10")
    page = visitor.open()
    card = queue_deep_research(page)
    expect(card.locator(".task-live .task-output")).to_contain_text("[Demo mode]", timeout=10_000)
    before = card.locator(".task-live .task-output").inner_text()
    task_id = card.get_attribute("data-task-id")

    page.reload()
    reloaded = page.locator(f"#task-{task_id}")
    started = time.monotonic()
    expect(reloaded.locator(".task-live .task-output")).to_contain_text(before[:200], timeout=2_000)
    assert time.monotonic() - started < 2
    expect(reloaded.locator(".task-steps li")).to_have_count(3)
    expect(page.locator(f"#task-{task_id} span.status")).to_have_text("Completed", timeout=15_000)
    expect(page.locator(f"#task-{task_id} .task-output")).to_contain_text("What the sources say")
    assert_stayed_local(visitor)


def live_headings(page, task_id: str, at_least: int) -> list[str]:
    "The headings of a running card's live answer, read at once as soon as there are `at_least` of them."
    return page.wait_for_function("([id, n]) => { const h = [...document.querySelectorAll(`#task-${id} .task-live h2`)]; "
                                  "return h.length >= n && h.map(e => e.textContent); }", arg=[task_id, at_least],
                                  timeout=15_000).json_value()


def test_a_long_answer_grows_in_order_and_once_across_a_reload(visit_server):
    """A report-length answer (`[demo:long]`: 24 parts) arrives block by block: each part shows once and in order,
    before a reload mid-run and after it."""
    visitor = visit_server(DEMO_DELAY_SECONDS="12")
    page = visitor.open()
    page.locator("select[name=model]").select_option("o4-mini-deep-research")
    page.locator("textarea[name=prompt]").fill(QUESTION + " [demo:long]")
    page.get_by_role("button", name="Queue Task").click()
    task_id = page.locator("#tasks article.task").first.get_attribute("data-task-id")
    in_order = lambda headings: ["What the sources say", *(f"Part {n}" for n in range(1, len(headings)))]
    before = live_headings(page, task_id, 6)
    assert before == in_order(before)

    page.reload()
    after = live_headings(page, task_id, 16)
    assert after == in_order(after)
    expect(page.locator(f"#task-{task_id} span.status")).to_have_text("Completed", timeout=15_000)
    expect(page.locator(f"#task-{task_id} .task-output h2")).to_have_count(25)
    assert_stayed_local(visitor)


def test_the_task_page_shows_the_whole_result(visit_server):
    visitor = visit_server(DEMO_DELAY_SECONDS="1")
    page = visitor.open()
    card = queue_deep_research(page)
    expect(card.locator("span.status")).to_have_text("Completed", timeout=10_000)
    page.locator("#tasks article.task").first.get_by_role("link", name="Open").click()
    expect(page).to_have_url(re.compile(r"/tasks/task_[A-Za-z0-9_-]{16}$"))
    expect(page.locator(".task-page .task-sources li")).to_have_count(3)
    expect(page.locator(".task-page")).to_contain_text("Reasoning summary")
    expect(page.locator(".task-page")).to_contain_text("(estimate)")
    expect(page.locator(".task-page .task-prompt-details")).to_contain_text(QUESTION)
    assert_stayed_local(visitor)
