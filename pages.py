"""The HTML pages: `/` (the prompt form and this owner's tasks), `/signin` and `/signout`."""
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

import ui
from access import with_owner
from limiter import Limited
from responses import page, retry_header
from services import Services
from store import TERMINAL

RECENT_TASKS = 20


async def running_progress(svc: Services, tasks: list[dict]) -> dict:
    "The recorded progress of each task that runs, to draw its card as it is now."
    return {t["id"]: await svc.tasks.progress.state_of(t["id"]) for t in tasks if t["status"] not in TERMINAL}


@with_owner(may_create=True)
async def index(request: Request, owner: str) -> Response:
    svc = Services.of(request)
    tasks = await svc.tasks.read_many(await svc.store.list_for_owner(owner, RECENT_TASKS))
    spent = await svc.budgets.spent_today(svc.store, svc.gate.account(request, owner)) if svc.budgets.per_account else None
    return page(ui.page(tasks, await running_progress(svc, tasks), svc.settings, exposed=svc.exposed, signed_in=svc.gate.on,
                        spent=spent))


@with_owner()
async def task_page(request: Request, owner: str) -> Response:
    svc = Services.of(request)
    task = await svc.tasks.read(request.path_params["task_id"], owner if svc.gate.on else None)
    if task is None: return page(ui.layout(ui.missing_task(request.path_params["task_id"])), 404)
    return page(ui.task_page(task, (await running_progress(svc, [task])).get(task["id"])))


async def signin_page(request: Request) -> Response:
    return page(ui.signin_page()) if Services.of(request).gate.on else RedirectResponse("/", 303)


async def signin(request: Request) -> Response:
    "A token from the sign-in form (never from the query string); while the address is limited, every try is 429."
    svc = Services.of(request)
    if not svc.gate.on: return RedirectResponse("/", 303)
    try:
        form = await request.form()
        if await svc.gate.sign_in(request, form.get("token")): return RedirectResponse("/", 303)
    except Limited as exc: return page(ui.signin_page(exc.message), 429, retry_header(exc.retry_after))
    except (MultiPartException, RuntimeError): return page(ui.signin_page("The sign-in form was malformed."), 400)
    return page(ui.signin_page("That token is not one of APP_ACCESS_TOKENS."), 401)


async def signout(request: Request) -> Response:
    svc = Services.of(request)
    await svc.gate.sign_out(request)
    return RedirectResponse("/signin" if svc.gate.on else "/", 303)
