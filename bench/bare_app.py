"""The baseline for bench/run.py: a plain Starlette app with the app's status and webhook paths.

`GET /api/status/{task_id}` answers a small task JSON, or with `HX-Request` a small HTML fragment;
`POST /api/webhook` reads the body and acks it. No framework wrapper, no store, no SDK: it is the
ceiling the app is compared with. BARE_SAMPLE_FILE (JSON `{"task": {...}, "html": "..."}`) makes it
answer the very bodies the app answered, so both send the same bytes.
Serve it with `uvicorn bench.bare_app:app` (or `uvicorn bare_app:app` from bench/).
"""
import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

SAMPLE_TASK = {
    "id": "task_bare0000000000", "status": "completed", "prompt": "Write a long report on tides",
    "model": "gpt-5-mini", "reasoning_effort": None,
    "output_text": "[Demo mode] No model was called: this answer was made up on your machine.",
    "error": None, "usage": {"input_tokens": 6, "output_tokens": 14, "total_tokens": 20},
    "response_id": "resp_" + "0" * 48, "created_at": "2025-01-01T00:00:00.000Z",
    "updated_at": "2025-01-01T00:00:03.000Z", "started_at": "2025-01-01T00:00:01.000Z",
    "completed_at": "2025-01-01T00:00:03.000Z", "status_url": "/api/status/task_bare0000000000",
}
SAMPLE_HTML = ('<article id="task-task_bare0000000000" class="task" data-task-id="task_bare0000000000">'
               '<header><span class="status status-completed" data-status="completed">Completed</span>'
               '<small class="task-meta"> gpt-5-mini · took 3 s (queued 1 s)</small></header>'
               '<details><summary>Write a long report on tides</summary><div class="task-prompt">Write a long report on tides</div>'
               '</details><div class="task-output"><p>[Demo mode] No model was called.</p></div></article>')


def load_samples() -> tuple[dict, str]:
    path = os.environ.get("BARE_SAMPLE_FILE")
    if not path: return SAMPLE_TASK, SAMPLE_HTML
    with open(path) as f: sample = json.load(f)
    return sample["task"], sample["html"]


TASK, HTML = load_samples()
TASKS = {TASK["id"]: TASK}


async def status(request: Request):
    task = TASKS.get(request.path_params["task_id"])
    if task is None: return JSONResponse({"error": {"message": "not found", "type": "not_found"}}, status_code=404)
    if "hx-request" in request.headers: return HTMLResponse(HTML)
    return JSONResponse(task)


async def webhook(request: Request):
    await request.body()
    return JSONResponse({"received": True, "outcome": "updated"})


app = Starlette(routes=[Route("/api/status/{task_id}", status, methods=["GET"]),
                        Route("/api/webhook", webhook, methods=["POST"]),
                        Route("/health", lambda request: JSONResponse({"status": "ok"}), methods=["GET"])])
