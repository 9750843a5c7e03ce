"""The HTML pages: `/` (the prompt form and this owner's tasks), `/signin` and `/signout`."""
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
    return page(ui.page(tasks, svc.settings.demo, svc.settings.allowed_models, svc.settings.max_prompt_chars,
                        exposed=svc.exposed, signed_in=svc.gate.on))


async def signin_page(request: Request) -> Response:
    return page(ui.signin_page()) if Services.of(request).gate.on else RedirectResponse("/", 303)


async def signin(request: Request) -> Response:
    svc = Services.of(request)
    token = (await request.form()).get("token")
    if not svc.gate.on or (isinstance(token, str) and svc.gate.sign_in(request.session, token.strip())):
        return RedirectResponse("/", 303)
    try: await svc.failed_signins.hit(request.client.host if request.client else "unknown", "Too many wrong tokens")
    except Limited as exc: return page(ui.signin_page(exc.message), 429, retry_header(exc.retry_after))
    return page(ui.signin_page("That token is not one of APP_ACCESS_TOKENS."), 401)


async def signout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/signin" if Services.of(request).gate.on else "/", 303)
