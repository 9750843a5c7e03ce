"""The page in a real browser: queue a prompt, watch it finish, without a reload or a request off the machine."""
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

XSS_PROMPT = 'Explain <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script> please'


def queue_prompt(page, prompt: str):
    page.locator("textarea[name=prompt]").fill(prompt)
    page.get_by_role("button", name="Queue Task").click()


def assert_stayed_local(visitor):
    assert visitor.remote_requests() == [], f"requests left localhost: {visitor.remote_requests()}"
    assert visitor.errors == [], f"JavaScript errors on the page: {visitor.errors}"


def test_queue_a_prompt_and_see_the_result_without_a_reload(visit, tmp_path):
    visitor = visit()
    page = visitor.open()
    expect(page.locator("#demo-banner")).to_contain_text("Demo mode")
    expect(page.locator("#tasks article.task")).to_have_count(0)
    first_key = page.locator("input[name=idempotency_key]").input_value()
    page.evaluate("window.__marker = 1")

    queue_prompt(page, "Write a long report on tides\nwith a second line")
    card = page.locator("#tasks article.task")
    expect(card).to_have_count(1)
    expect(card.locator(".task-prompt-details summary")).to_contain_text("Write a long report on tides")
    badge = card.locator("span.status")
    expect(badge).to_have_text("Completed", timeout=10_000)
    expect(badge).to_have_attribute("data-status", "completed")
    expect(card.locator("div.task-output")).to_contain_text("[Demo mode]")
    expect(card.locator("div.task-output")).to_contain_text("It began: Write a long report on tides")
    expect(card).not_to_have_attribute("hx-trigger", "every 2s")

    assert page.evaluate("window.__marker") == 1, "the page was reloaded"
    assert visitor.loads == 1, f"the page loaded {visitor.loads} times"
    expect(page.locator("textarea[name=prompt]")).to_have_value("")
    assert page.locator("input[name=idempotency_key]").input_value() != first_key, "the form was not replaced"
    expect(page.locator("#form-error")).to_be_empty()
    requested = {url.split("?")[0].removeprefix(page.url.rstrip("/")) for url in visitor.requests}
    assert {"/static/vendor/htmx.min.js", "/static/vendor/pico.min.css", "/api/queue"} <= requested, requested
    assert_stayed_local(visitor)

    expect(page.get_by_role("heading", name="Background prompts")).to_be_visible()
    expect(page.locator("#demo-banner")).to_be_visible()
    expect(page.get_by_role("button", name="Queue Task")).to_be_visible()
    expect(card.locator("div.task-output")).to_be_visible()
    png = page.screenshot(path=tmp_path / "page.png", full_page=True)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000, "the screenshot is blank"


def test_markup_in_a_prompt_is_shown_as_text(visit):
    visitor = visit()
    page = visitor.open()
    queue_prompt(page, XSS_PROMPT)
    card = page.locator("#tasks article.task")
    expect(card.locator("span.status")).to_have_text("Completed", timeout=10_000)

    expect(card.locator(".task-prompt-details summary")).to_have_text(XSS_PROMPT)
    expect(card.locator("div.task-prompt")).to_have_text(XSS_PROMPT)
    expect(card.locator("div.task-output")).to_contain_text(f"It began: {XSS_PROMPT}")
    expect(card.locator("img")).to_have_count(0)
    expect(card.locator("script")).to_have_count(0)
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert not [url for url in visitor.requests if url.endswith("/x")], "the injected <img> was loaded"
    assert_stayed_local(visitor)


def test_tasks_belong_to_the_browser_that_queued_them(visit):
    owner = visit()
    page = owner.open()
    queue_prompt(page, "Summarise the history of lighthouses")
    card = page.locator("#tasks article.task")
    expect(card).to_have_count(1)
    task_id = card.get_attribute("data-task-id")
    assert task_id

    page.reload()
    expect(page.locator("#tasks article.task")).to_have_count(1)
    expect(page.locator(f"#task-{task_id}")).to_contain_text("Summarise the history of lighthouses")
    assert owner.loads == 2

    stranger = visit()
    other_page = stranger.open()
    expect(other_page.locator("#prompt-form")).to_be_visible()
    expect(other_page.locator("#tasks article.task")).to_have_count(0)
    assert "lighthouses" not in other_page.content()
    assert_stayed_local(owner)
    assert_stayed_local(stranger)


def test_an_empty_prompt_shows_the_servers_error_and_queues_nothing(visit):
    visitor = visit()
    page = visitor.open()
    with page.expect_response("**/api/queue") as answer: queue_prompt(page, "   \n  ")
    assert answer.value.status == 400
    error = page.locator("#form-error")
    expect(error).to_contain_text("The prompt is empty")
    expect(error).to_have_attribute("role", "alert")
    expect(page.locator("#tasks article.task")).to_have_count(0)

    page.evaluate("document.getElementById('form-error').replaceChildren()")
    page.locator("textarea[name=prompt]").evaluate("textarea => textarea.removeAttribute('required')")
    with page.expect_response("**/api/queue") as answer: queue_prompt(page, "")
    assert answer.value.status == 400
    expect(error).to_contain_text("The prompt is empty")
    expect(page.locator("#tasks article.task")).to_have_count(0)

    queue_prompt(page, "Now a real prompt")
    expect(page.locator("#tasks article.task")).to_have_count(1)
    expect(error).to_be_empty()
    assert visitor.loads == 1
    assert_stayed_local(visitor)


def test_without_webhooks_a_task_still_completes_on_the_page(visit_server):
    visitor = visit_server(DEMO_WEBHOOKS="off", RECONCILE_SECONDS="1")
    page = visitor.open()
    queue_prompt(page, "No webhook will come for this one")
    card = page.locator("#tasks article.task")
    expect(card.locator("span.status")).to_have_text("Completed", timeout=10_000)
    expect(card.locator("div.task-output")).to_contain_text("[Demo mode]")
    assert_stayed_local(visitor)


def test_a_double_click_queues_once(visit_server):
    visitor = visit_server(DEMO_DELAY_SECONDS="2")
    page = visitor.open()
    page.locator("textarea[name=prompt]").fill("Only once, please")
    page.get_by_role("button", name="Queue Task").dblclick()
    expect(page.locator("#tasks article.task")).to_have_count(1)
    page.reload()
    expect(page.locator("#tasks article.task")).to_have_count(1)


def test_a_cancel_click_stops_a_running_task(visit_server):
    visitor = visit_server(DEMO_DELAY_SECONDS="60")
    page = visitor.open()
    queue_prompt(page, "A long one to cancel")
    card = page.locator("#tasks article.task")
    card.get_by_role("button", name="Cancel").click()
    expect(card.locator("span.status")).to_have_text("Cancelled")
    expect(card.get_by_role("button", name="Cancel")).to_have_count(0)
    assert_stayed_local(visitor)


def test_openai_rate_limit_shows_a_readable_message_in_the_card(visit_server, tmp_path):
    import httpx2

    from config import new_webhook_secret
    from tests.conftest import LiveServer, free_port
    secret, app_port = new_webhook_secret(), free_port()
    emulator = LiveServer(tmp_path, "emulator.py", "EMULATOR_PORT", "/_emulator/stats", OPENAI_WEBHOOK_SECRET=secret,
                          EMULATOR_WEBHOOK_URL=f"http://127.0.0.1:{app_port}/api/webhook")
    try:
        visitor = visit_server(port=app_port, OPENAI_API_KEY="sk-browser-test", OPENAI_WEBHOOK_SECRET=secret,
                               OPENAI_BASE_URL=f"{emulator.url}/v1")
        page = visitor.open()
        expect(page.locator("#demo-banner")).to_have_count(0)
        httpx2.post(f"{emulator.url}/_emulator/fail", json={"operation": "create", "status": 429,
                    "message": "Rate limit reached for gpt-5-mini", "headers": {"retry-after": "20"}})
        queue_prompt(page, "This one meets a rate limit")
        card = page.locator("#tasks article.task")
        expect(card.locator("span.status")).to_have_text("Failed")
        expect(card.locator(".task-error")).to_contain_text("Rate limit reached for gpt-5-mini")
        expect(card.locator(".task-error")).to_contain_text("Retry after 20 s")
        assert "sk-browser-test" not in page.content()
        assert_stayed_local(visitor)
    finally:
        emulator.stop()
