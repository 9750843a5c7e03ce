"""Access and abuse: the token gate, owners, limits, cross-site writes, headers, and a fuzz of every route."""
import asyncio
import base64
import json
import secrets
import socket
import time
from urllib.parse import quote

import httpx2
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import AppHarness, _drop_schema, _pg_schema_url, require, require_postgres

TOKENS = ("alpha-token-0123456789", "bravo-token-9876543210")


def bearer(token): return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def gated(make_harness):
    return await make_harness(access_tokens=TOKENS)


def browser(harness, scheme="http") -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=harness.client._transport, base_url=f"{scheme}://testserver")


async def signed_in_browser(harness, token=TOKENS[0], scheme="http"):
    client = browser(harness, scheme)
    response = await client.post("/signin", data={"token": token})
    assert response.status_code == 303 and response.headers["location"] == "/"
    return client


async def test_page_asks_for_a_token_then_remembers_the_session(gated):
    anonymous = browser(gated)
    first = await anonymous.get("/")
    assert first.status_code == 303 and first.headers["location"] == "/signin"
    signin = await anonymous.get("/signin")
    assert signin.status_code == 200 and 'name="token"' in signin.text and 'type="password"' in signin.text
    wrong = await anonymous.post("/signin", data={"token": "guess"})
    assert wrong.status_code == 401 and "not one of APP_ACCESS_TOKENS" in wrong.text
    assert (await anonymous.get("/")).status_code == 303
    client = await signed_in_browser(gated)
    page = await client.get("/")
    assert page.status_code == 200 and "Queue Task" in page.text and "Sign out" in page.text
    assert (await client.post("/signout")).status_code == 303
    assert (await client.get("/")).status_code == 303


async def test_api_needs_a_bearer_token_in_the_header(gated):
    missing = await gated.queue()
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert set(missing.json()["error"]) == {"message", "type"}
    wrong = await gated.client.post("/api/queue", json={"prompt": "hi"}, headers=bearer("alpha-token-0123456788"))
    assert wrong.status_code == 401
    in_query = await gated.client.post(f"/api/queue?token={TOKENS[0]}&access_token={TOKENS[0]}", json={"prompt": "hi"})
    assert in_query.status_code == 401
    ok = await gated.client.post("/api/queue", json={"prompt": "hi"}, headers=bearer(TOKENS[0]))
    assert ok.status_code == 202
    assert (await gated.status(ok.json()["id"])).status_code == 401
    assert (await gated.status(ok.json()["id"], headers=bearer(TOKENS[0]))).status_code == 200
    assert gated.emulator.calls["create"] == 1


async def test_htmx_calls_without_a_session_are_sent_to_sign_in(gated):
    response = await gated.client.post("/api/queue", data={"prompt": "hi"}, headers={"HX-Request": "true"})
    assert response.status_code == 401 and response.headers["hx-redirect"] == "/signin"


async def test_webhook_stays_open_and_health_tells_nothing_secret(gated):
    token_client = bearer(TOKENS[0])
    task = (await gated.client.post("/api/queue", json={"prompt": "hi"}, headers=token_client)).json()
    await gated.wait_status(task["id"], "completed")
    assert [d["status"] for d in gated.emulator.deliveries] == [200]
    health = await gated.client.get("/health")
    assert health.status_code == 200
    assert not any(t in health.text for t in TOKENS) and gated.secret not in health.text


async def test_owners_see_only_their_own_tasks(gated):
    alice, bob = await signed_in_browser(gated), await signed_in_browser(gated)
    alice_task = (await alice.post("/api/queue", json={"prompt": "alice's secret plan"})).json()
    bob_task = (await bob.post("/api/queue", json={"prompt": "bob's"})).json()
    assert "alice&#x27;s secret plan" not in (await bob.get("/")).text and "secret plan" not in (await bob.get("/")).text
    assert "secret plan" in (await alice.get("/")).text
    assert (await bob.get(f"/api/status/{alice_task['id']}")).status_code == 404
    assert (await bob.post(f"/api/cancel/{alice_task['id']}")).status_code == 404
    assert [t["id"] for t in (await bob.get("/api/tasks")).json()["tasks"]] == [bob_task["id"]]
    # two tokens are two owners too
    token_task = (await gated.client.post("/api/queue", json={"prompt": "by token A"}, headers=bearer(TOKENS[0]))).json()
    assert (await gated.status(token_task["id"], headers=bearer(TOKENS[1]))).status_code == 404
    assert (await gated.client.get("/api/tasks", headers=bearer(TOKENS[1]))).json()["tasks"] == []
    assert [t["id"] for t in (await gated.client.get("/api/tasks", headers=bearer(TOKENS[0]))).json()["tasks"]] == [token_task["id"]]
    assert (await alice.get(f"/api/status/{token_task['id']}")).status_code == 404


async def test_session_cookie_is_signed_httponly_lax_secure_on_https_and_holds_no_secret(gated):
    client = browser(gated, scheme="https")
    response = await client.post("/signin", data={"token": TOKENS[0]})
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower() and "secure" in cookie.lower()
    payload = cookie.split("session=")[1].split(".")[0]
    decoded = base64.b64decode(payload + "=" * (-len(payload) % 4)).decode()
    assert TOKENS[0] not in decoded and "signed_in" in decoded
    plain = browser(gated)
    assert "secure" not in (await plain.post("/signin", data={"token": TOKENS[0]})).headers["set-cookie"].lower()
    tampered = browser(gated)
    tampered.cookies.set("session", base64.b64encode(json.dumps({"signed_in": "x", "owner": "y"}).encode()).decode() + ".forged.sig")
    assert (await tampered.get("/")).status_code == 303


async def test_the_eleventh_queue_in_a_minute_gets_429_with_retry_after(make_harness):
    harness = await make_harness(queue_rate="10/minute", max_running_per_owner=100)
    await harness.client.get("/")  # one browser
    answers = [await harness.queue(f"prompt {i}") for i in range(11)]
    assert [a.status_code for a in answers] == [202] * 10 + [429]
    assert int(answers[-1].headers["retry-after"]) > 0
    assert "Too many prompts queued" in answers[-1].json()["error"]["message"]
    page_attempt = await harness.client.post("/api/queue", data={"prompt": "again"}, headers={"HX-Request": "true"})
    assert page_attempt.status_code == 429 and page_attempt.headers["hx-retarget"] == "#form-error"
    assert "Try again in" in page_attempt.text
    assert harness.emulator.calls["create"] == 10


async def test_running_tasks_per_owner_are_capped(make_harness):
    harness = await make_harness(max_running_per_owner=2, demo_delay_seconds=30)
    answers = [await harness.queue(f"p{i}") for i in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert "2 tasks running" in answers[-1].json()["error"]["message"]
    await harness.client.post(f"/api/cancel/{answers[0].json()['id']}")
    assert (await harness.queue("after a cancel")).status_code == 202


def redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5): return True
    except OSError: return False


async def test_rate_limit_counts_across_processes_through_redis(make_harness):
    require("Redis", redis_reachable(), "start redis-server on 127.0.0.1:6379")
    token = "shared-" + secrets.token_hex(8)
    apps = [await make_harness(access_tokens=(token,), queue_rate="3/minute",
                               rate_limit_storage_url="redis://127.0.0.1:6379/15") for _ in range(2)]
    codes = [(await apps[i % 2].client.post("/api/queue", json={"prompt": "x"}, headers=bearer(token))).status_code for i in range(4)]
    assert codes == [202, 202, 202, 429]


@pytest.mark.parametrize("headers,status", [
    ({"Sec-Fetch-Site": "cross-site"}, 403),
    ({"Sec-Fetch-Site": "same-site"}, 403),
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "http://testserver.evil.example"}, 403),
    ({"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}, 202),
    ({"Origin": "http://testserver"}, 202),
    ({}, 202),
])
async def test_cross_site_writes_are_refused(harness, headers, status):
    response = await harness.client.post("/api/queue", data={"prompt": "hi"}, headers=headers)
    assert response.status_code == status
    if status == 403: assert harness.emulator.calls["create"] == 0 and response.json()["error"]["type"] == "cross_site"


async def test_bearer_api_and_webhook_are_exempt_from_the_cross_site_check(gated):
    response = await gated.client.post("/api/queue", json={"prompt": "hi"},
                                       headers={**bearer(TOKENS[0]), "Sec-Fetch-Site": "cross-site", "Origin": "http://elsewhere"})
    assert response.status_code == 202
    webhook = await gated.deliver({"object": "event", "id": "evt", "type": "response.completed", "created_at": int(time.time()),
                                   "data": {"id": "resp_x"}})
    assert webhook.status_code == 200


@pytest.mark.parametrize("path", ["/", "/api/status/task_x", "/static/app.css", "/nope", "/health", "/signin"])
async def test_security_headers_on_every_response(harness, path):
    response = await harness.client.get(path)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"


async def test_page_has_no_inline_script_or_style_and_htmx_allows_no_eval(harness):
    html = (await harness.client.get("/")).text
    assert "<script>" not in html and "<style" not in html and " style=" not in html and "hx-on" not in html
    assert '&quot;allowEval&quot;: false' in html or '"allowEval": false' in html


async def test_open_app_in_openai_mode_on_a_public_host_warns(make_openai_harness):
    harness = await make_openai_harness(on_vercel=True, session_secret="s" * 32)
    assert "This app is open to anyone" in (await harness.client.get("/")).text


route_inputs = st.one_of(
    st.tuples(st.just("POST"), st.just("/api/queue"), st.sampled_from(["application/json", "application/x-www-form-urlencoded",
              "multipart/form-data; boundary=xyz", "text/plain", ""]), st.one_of(st.binary(max_size=300),
              st.dictionaries(st.sampled_from(["prompt", "model", "reasoning_effort", "idempotency_key", "x"]),
                              st.one_of(st.text(max_size=50), st.integers(), st.none(), st.lists(st.text(max_size=5), max_size=2)),
                              max_size=4).map(lambda d: json.dumps(d).encode()))),
    st.tuples(st.just("POST"), st.just("/api/queue"), st.just("application/json"),
              st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=80)},
                                    optional={"model": st.sampled_from(["gpt-5-mini", "gpt-nope"]),
                                              "reasoning_effort": st.sampled_from(["low", "extreme", ""])}
                                    ).map(lambda d: json.dumps(d).encode())),
    st.tuples(st.sampled_from(["GET", "POST"]), st.text(max_size=40).map(lambda t: "/api/status/" + quote(t, safe="")), st.just(""), st.just(b"")),
    st.tuples(st.just("POST"), st.text(max_size=40).map(lambda t: "/api/cancel/" + quote(t, safe="")), st.just(""), st.just(b"")),
    st.tuples(st.just("GET"), st.tuples(st.text(max_size=30), st.text(max_size=6)).map(
        lambda t: f"/api/tasks?cursor={quote(t[0], safe='')}&limit={quote(t[1], safe='')}"), st.just(""), st.just(b"")),
    st.tuples(st.just("POST"), st.just("/api/webhook"), st.sampled_from(["application/json", ""]), st.binary(max_size=300)),
    st.tuples(st.just("POST"), st.just("/signin"), st.just("application/x-www-form-urlencoded"), st.binary(max_size=100)),
    st.tuples(st.sampled_from(["GET", "DELETE", "PUT"]), st.sampled_from(["/", "/health", "/api/queue", "/api/webhook", "/signin"]),
              st.just(""), st.just(b"")),
)
webhook_headers = st.dictionaries(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]),
                                  st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60))


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_fuzz_every_route_no_5xx_and_nothing_stored_on_4xx(tmp_path, settings, database):
    from dataclasses import replace

    from web import create_app
    loop = asyncio.new_event_loop()
    database_url, schema = f"sqlite:///{tmp_path}/fuzz.db", None
    if database == "postgresql":
        require_postgres()
        schema, database_url = loop.run_until_complete(_pg_schema_url())
    harness = AppHarness(create_app(replace(settings, queue_rate="100000/minute", signin_rate="100000/minute", max_running_per_owner=100000, demo_webhooks=False,
                                            access_tokens=TOKENS, database_url=database_url)))

    async def counts():
        store = await harness.store()
        tasks = await store._fetch("SELECT COUNT(*) AS n FROM tasks", {})
        events = await store._fetch("SELECT COUNT(*) AS n FROM webhook_events", {})
        return tasks[0]["n"], events[0]["n"]

    @hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(request=route_inputs, extra=webhook_headers, authorized=st.booleans(), htmx=st.booleans())
    def check(request, extra, authorized, htmx):
        method, path, content_type, body = request
        headers = {**({"content-type": content_type} if content_type else {}), **(extra if path == "/api/webhook" else {}),
                   **(bearer(TOKENS[0]) if authorized else {}), **({"HX-Request": "true"} if htmx else {})}

        async def go():
            statuses.append(None)
            before = await counts()
            response = await harness.client.request(method, path, content=body, headers=headers)
            assert response.status_code < 500, (method, path, response.status_code, response.text[:300])
            statuses[-1] = response.status_code
            if response.status_code >= 400: assert await counts() == before, (method, path, response.status_code)
        loop.run_until_complete(go())

    statuses = []
    try:
        check()
        assert len(statuses) >= 300 and {202, 400, 401, 404}.issubset(statuses), sorted(set(statuses))
    finally:
        loop.run_until_complete(harness.close())
        if schema: loop.run_until_complete(_drop_schema(schema))
        loop.close()


async def test_other_authorization_schemes_are_not_ours(make_harness, gated):
    open_app = await make_harness()
    behind_basic_auth = await open_app.client.post("/api/queue", json={"prompt": "hi"},
                                                   headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert behind_basic_auth.status_code == 202
    assert (await open_app.client.get("/", headers={"Authorization": "Bearer whatever"})).status_code == 200
    client = await signed_in_browser(gated)
    assert (await client.get("/", headers={"Authorization": "Basic dXNlcjpwYXNz"})).status_code == 200


async def test_nul_characters_and_malformed_ids_get_4xx(harness):
    assert (await harness.queue("hi\x00there")).status_code == 400
    for task_id in ("abc%00def", "task_" + "x" * 40, "..%2F..%2Fetc"):
        assert (await harness.client.get(f"/api/status/{task_id}")).status_code == 404
    assert await (await harness.store()).list_for_owner("api", 5) == []


async def test_signed_in_sessions_of_one_token_share_its_rate_limit(make_harness):
    harness = await make_harness(access_tokens=TOKENS, queue_rate="3/minute")
    codes = []
    for _ in range(4):
        client = await signed_in_browser(harness)
        codes.append((await client.post("/api/queue", json={"prompt": "x"})).status_code)
    assert codes == [202, 202, 202, 429]


async def test_failed_sign_ins_are_throttled_per_address(gated):
    client = browser(gated)
    codes = [(await client.post("/signin", data={"token": f"guess-{i}"})).status_code for i in range(11)]
    assert codes == [401] * 10 + [429]
    throttled = await client.post("/signin", data={"token": "guess"})
    assert "Too many wrong tokens" in throttled.text and int(throttled.headers["retry-after"]) > 0
