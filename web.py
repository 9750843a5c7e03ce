"""`create_app`: the middleware, the lifespan, and the one route table, in the order of the contract (DESIGN.md)."""
import logging
from pathlib import Path

from fasthtml.common import FastHTML
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import api
import pages
from access import AccessRefused
from config import Settings, load_settings
from limiter import Limited, LimiterUnavailable
from middleware import AllowedHosts, BodyLimit, CrossSiteWrites, HeaderLimit, SecurityHeaders
from responses import (access_refused, http_error, limited, limiter_down, refusal, running_cap_reached, server_error,
                       store_down)
from services import Services
from store import RunningCapReached, StoreUnavailable
from telemetry import RequestMetrics

log = logging.getLogger("web")
STATIC_DIR = Path(__file__).parent / "static"
SESSION_KEY_FILE = Path("data/.sesskey")

ROUTES = [
    Route("/", pages.index, methods=["GET"]),
    Route("/tasks/{task_id}", pages.task_page, methods=["GET"]),
    Route("/api/queue", api.queue, methods=["POST"]),
    Route("/api/status/{task_id}", api.status, methods=["GET"]),
    Route("/api/events/{task_id}", api.events, methods=["GET"]),
    Route("/api/export/{task_id}.md", api.export, methods=["GET"]),
    Route("/api/cancel/{task_id}", api.cancel, methods=["POST"]),
    Route("/api/tasks", api.list_tasks, methods=["GET"]),
    Route("/api/webhook", api.webhook, methods=["POST"]),
    Route("/health", api.health, methods=["GET"]),
    Route("/metrics", api.metrics, methods=["GET"]),
    Route("/signin", pages.signin_page, methods=["GET"]),
    Route("/signin", pages.signin, methods=["POST"]),
    Route("/signout", pages.signout, methods=["POST"]),
    Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
]
EXCEPTION_HANDLERS = {StoreUnavailable: store_down, AccessRefused: access_refused, Limited: limited,
                      RunningCapReached: running_cap_reached, LimiterUnavailable: limiter_down, HTTPException: http_error,
                      404: http_error, 405: http_error, Exception: server_error}


class App(FastHTML):
    "The FastHTML app with the security headers and request metrics outermost, so that a 500 has them too."

    def build_middleware_stack(self):
        return SecurityHeaders(RequestMetrics(super().build_middleware_stack()))


async def lifespan(app):
    "Close the services when the server stops."
    yield
    await app.state.services.close()


def session_key(settings: Settings) -> str | None:
    "SESSION_SECRET, or None to have FastHTML keep a key in data/.sesskey (config requires SESSION_SECRET on Vercel)."
    if settings.session_secret: return settings.session_secret
    SESSION_KEY_FILE.parent.mkdir(exist_ok=True)
    return None


def create_app(settings: Settings | None = None, http_client=None) -> App:
    "The app; `http_client` stands in for the network to OpenAI (tests aim it at an emulator)."
    settings = settings or load_settings()
    app = App(routes=ROUTES, default_hdrs=False, secret_key=session_key(settings), key_fname=str(SESSION_KEY_FILE),
              session_cookie="session", same_site="lax", max_age=settings.session_max_age,
              exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan,
              middleware=[Middleware(HeaderLimit, refuse=refusal), Middleware(AllowedHosts, hosts=settings.hosts, refuse=refusal),
                          Middleware(BodyLimit, limit=settings.max_body_bytes, refuse=refusal),
                          Middleware(CrossSiteWrites, refuse=refusal)])
    app.state.services = Services.build(settings, app.secret_key, webhook_target=app, http_client=http_client)
    if app.state.services.exposed:
        log.warning("APP_ACCESS_TOKENS is not set: anyone with this app's URL can spend your OpenAI key and read every result")
    return app
