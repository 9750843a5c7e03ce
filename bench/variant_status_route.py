"""An experiment, not a change: the app with GET /api/status/{id} served by a plain Starlette route.

Used as `bench/run.py --app-target variant_status_route:app` to measure what the FastHTML route
wrapper (`_endp`: deepcopy of hdrs/ftrs/htmlkw/bodykw, body parse, parameter injection, the
app-level `before`, `_resp`) costs on the hot polling route. The route does what the app's own
`status` does (read_quietly, the same JSON and fragment) and is put in front of the app's routes;
middleware (security headers, body limit, sessions) still runs. It omits the owner check, which only
applies with APP_ACCESS_TOKENS set (the benchmark runs without): a real change would keep it.
"""
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import ui
from app import create_app, fragment, not_found, wants_html
from tasks import task_json

app = create_app()
service = app.state.service


async def status(request: Request):
    task_id = request.path_params["task_id"]
    task = await (await service()).read_quietly(task_id)
    if task is None: return not_found(request, task_id)
    return fragment(ui.task_card(task)) if wants_html(request) else JSONResponse(task_json(task))


app.router.routes.insert(0, Route("/api/status/{task_id}", status, methods=["GET"]))
