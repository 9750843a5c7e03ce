"""The HTML pages: `/` (the prompt form and this owner's tasks), `/signin` and `/signout`."""
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

import ui
from access import with_owner
from limiter import Limited
from responses import page, retry_header
from services import Services

RECENT_TASKS = 20


@with_owner(may_create=True)
async def index(request: Request, owner: str) -> Response:
    svc = Services.of(request)
    tasks = await svc.tasks.read_many(await svc.store.list_for_owner(owner, RECENT_TASKS))
    spent = await svc.budgets.spent_today(svc.store, svc.gate.account(request, owner)) if svc.budgets.per_account else None
    return page(ui.page(tasks, svc.settings, exposed=svc.exposed, signed_in=svc.gate.on, spent=spent))


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
