"""The store's contract, run against SQLite and (with TEST_DATABASE_URL) PostgreSQL."""
import asyncio
import secrets
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from store import TERMINAL, SqliteTaskStore, new_task_row, store_for
from tests.conftest import ROOT


@pytest.fixture
async def store(database_url):
    store = await store_for(database_url).open()
    yield store
    await store.close()


def row(owner="alice", key=None, **kw):
    return new_task_row(id="task_" + secrets.token_hex(6), owner=owner, prompt="p", model="m", idempotency_key=key, **kw)


async def test_create_and_get(store):
    task, created = await store.create(row())
    assert created and (await store.get(task["id"]))["status"] == "queued"
    assert await store.get("task_missing") is None


async def test_idempotency_key_returns_the_first_task(store):
    first, created = await store.create(row(key="k1"))
    again, created_again = await store.create(row(key="k1"))
    other_owner, created_other = await store.create(row(owner="bob", key="k1"))
    assert created and not created_again and created_other
    assert again["id"] == first["id"] and other_owner["id"] != first["id"]


async def test_concurrent_creates_with_one_key_make_one_task(store):
    results = await asyncio.gather(*[store.create(row(key="same")) for _ in range(8)])
    assert sum(created for _, created in results) == 1
    assert len({task["id"] for task, _ in results}) == 1


async def test_updates_only_move_forward_and_terminal_is_final(store):
    task, _ = await store.create(row())
    await store.attach_response(task["id"], "resp_1")
    assert await store.advance(task["id"], "in_progress")
    assert not await store.advance(task["id"], "queued")
    assert not await store.advance(task["id"], "in_progress")
    assert await store.advance(task["id"], "completed", output_text="done", usage={"total_tokens": 3})
    for status in ("queued", "in_progress", *TERMINAL):
        assert not await store.advance(task["id"], status, output_text="changed")
    final = await store.get_by_response("resp_1")
    assert final["status"] == "completed" and final["output_text"] == "done" and final["usage"] == {"total_tokens": 3}
    assert final["completed_at"] is not None


async def test_racing_terminal_updates_leave_one_consistent_state(store):
    task, _ = await store.create(row())
    wins = await asyncio.gather(store.advance(task["id"], "completed", output_text="answer"),
                                store.advance(task["id"], "cancelled", error="cancelled"))
    assert sum(wins) == 1
    final = await store.get(task["id"])
    assert (final["status"], final["output_text"], final["error"]) in [("completed", "answer", None), ("cancelled", None, "cancelled")]


async def test_webhook_ids_are_claimed_once_and_can_be_released(store):
    assert await store.claim_webhook("wh_1") == "claimed"
    assert await store.claim_webhook("wh_1") == "busy"
    await store.release_webhook("wh_1")
    assert await store.claim_webhook("wh_1") == "claimed"
    await store.finish_webhook("wh_1")
    assert await store.claim_webhook("wh_1") == "done"
    await store.release_webhook("wh_1")  # a finished id is never forgotten by a release
    assert await store.claim_webhook("wh_1") == "done"


async def test_concurrent_claims_of_one_webhook_id_grant_one(store):
    claims = await asyncio.gather(*[store.claim_webhook("wh_race") for _ in range(10)])
    assert claims.count("claimed") == 1 and claims.count("busy") == 9


async def test_an_abandoned_webhook_claim_is_taken_over(store):
    assert await store.claim_webhook("wh_stale") == "claimed"
    await store._execute("UPDATE webhook_events SET received_at = received_at - 61 WHERE id = 'wh_stale'", {})
    assert await store.claim_webhook("wh_stale") == "claimed"
    assert await store.claim_webhook("wh_stale") == "busy"


async def test_an_older_database_is_migrated_at_start_up(database_url):
    store = await store_for(database_url).open()
    await store._execute("DROP TABLE webhook_events", {})
    await store._execute("CREATE TABLE webhook_events (id TEXT PRIMARY KEY, received_at DOUBLE PRECISION NOT NULL)", {})
    await store._execute("INSERT INTO webhook_events (id, received_at) VALUES ('wh_old', 1e12)", {})
    await store.close()
    for _ in range(2):  # twice: migrating is idempotent
        store = await store_for(database_url).open()
        assert await store.claim_webhook("wh_old") == "done"
        await store.close()


async def test_claim_check_is_granted_once_per_interval(store):
    task, _ = await store.create(row())
    assert not await store.claim_check(task["id"], 5)  # no response yet: nothing to check
    await store.attach_response(task["id"], "resp_2")
    assert not await store.claim_check(task["id"], 5)  # just checked when attached
    assert await store.claim_check(task["id"], 0)
    results = await asyncio.gather(*[store.claim_check(task["id"], 60) for _ in range(10)])
    assert sum(results) == 0
    await store.advance(task["id"], "completed")
    assert not await store.claim_check(task["id"], 0)


async def test_list_for_owner_is_newest_first_with_a_cursor(store):
    made = []
    for i in range(5):
        task, _ = await store.create(row(created_at=1000.0 + i // 2))
        made.append(task)
    await store.create(row(owner="bob"))
    page1 = await store.list_for_owner("alice", limit=3)
    page2 = await store.list_for_owner("alice", limit=3, before=(page1[-1]["created_at"], page1[-1]["id"]))
    ids = [t["id"] for t in page1 + page2]
    assert len(ids) == 5 and len(set(ids)) == 5 and {t["id"] for t in made} == set(ids)
    stamps = [t["created_at"] for t in page1 + page2]
    assert stamps == sorted(stamps, reverse=True)


async def test_sqlite_tasks_survive_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path}/restart.db"
    first = await store_for(url).open()
    task, _ = await first.create(row())
    await first.advance(task["id"], "completed", output_text="kept")
    await first.close()
    second = await store_for(url).open()
    assert (await second.get(task["id"]))["output_text"] == "kept"
    await second.close()


async def test_sqlite_uses_wal_and_normal_sync(tmp_path):
    store = await SqliteTaskStore(str(tmp_path / "pragmas.db")).open()
    thread_pragma = lambda name: store._run(lambda: store._db.execute(f"PRAGMA {name}").fetchone()[0])
    assert await thread_pragma("journal_mode") == "wal"
    assert await thread_pragma("busy_timeout") == 10000
    for connection in (store._db, store._writer, store._reader):
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 1
    await store.close()


WRITER = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from store import store_for, new_task_row
    async def main():
        store = await store_for({url!r}).open()
        i = 0
        while True:
            task, _ = await store.create(new_task_row(id=f"task_{{i}}", owner="w", prompt="p" * 500, model="m"))
            await store.advance(task["id"], "completed", output_text="o" * 500)
            print(task["id"], flush=True)
            i += 1
    asyncio.run(main())
""")


async def test_kill_9_mid_writes_loses_no_acknowledged_write(database_url):
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER.format(root=str(ROOT), url=database_url),
                                                   stdout=subprocess.PIPE)
    acknowledged = []
    while len(acknowledged) < 300:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, "the writer died before it was killed"
        acknowledged.append(line.decode().strip())
    process.send_signal(signal.SIGKILL)
    await process.wait()
    acknowledged += [l.decode().strip() for l in (await process.stdout.read()).splitlines() if l.strip()]
    store = await store_for(database_url).open()
    try:
        for task_id in acknowledged:
            task = await store.get(task_id)
            assert task is not None and task["status"] == "completed", task_id
    finally:
        await store.close()


async def test_sqlite_write_waits_for_another_writer_off_the_event_loop(tmp_path):
    path = tmp_path / "locked.db"
    store = await SqliteTaskStore(str(path)).open()
    task, _ = await store.create(row())
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    write = asyncio.create_task(store.advance(task["id"], "completed", output_text="after the lock"))
    ticks = 0
    while ticks < 20:  # the loop keeps running while the write waits on its thread
        await asyncio.sleep(0.005)
        ticks += 1
        assert not write.done()
    assert (await store.get(task["id"]))["status"] == "queued"
    other.execute("COMMIT")
    assert await asyncio.wait_for(write, 5) is True
    assert (await store.get(task["id"]))["output_text"] == "after the lock"
    other.close()
    await store.close()
