"""The long-lived objects of one app, built once and kept on `app.state.services`; handlers reach them there."""
from dataclasses import dataclass

import httpx2

from access import Gate
from config import Settings
from emulator import DatabaseRecords, Emulator
from inprocess import StreamingASGITransport
from limiter import Budgets, RateLimit
from openai_client import OpenAIGateway
from store import SqlTaskStore, store_for
from tasks import TaskService

EMULATOR_BASE_URL = "http://emulator.demo/v1"


@dataclass
class Services:
    settings: Settings
    store: SqlTaskStore
    gateway: OpenAIGateway
    tasks: TaskService
    gate: Gate
    queue_rate: RateLimit
    failed_signins: RateLimit
    budgets: Budgets
    emulator: Emulator | None

    @classmethod
    def build(cls, settings: Settings, session_key: str, webhook_target, http_client: httpx2.AsyncClient | None = None):
        """The services of an app. In demo mode the SDK talks to an emulator in this process, which keeps its responses
        in the app's database (so every process answers alike) and sends its webhooks to `webhook_target` (the app
        itself); otherwise the SDK talks to OpenAI, or to `http_client` when given (tests)."""
        emulator, secret, store = None, settings.effective_webhook_secret, store_for(settings.database_url)
        if settings.demo:
            emulator = Emulator(webhook_target, secret, settings.demo_delay_seconds,
                                deliver_webhooks=settings.demo_webhooks and not settings.on_vercel,  # no work after a response
                                records=DatabaseRecords(store))
            http_client = httpx2.AsyncClient(transport=StreamingASGITransport(emulator.app))
        gateway = OpenAIGateway(settings.openai_api_key or "demo-mode", EMULATOR_BASE_URL if emulator else settings.base_url,
                                secret, http_client)
        failed_signins = RateLimit(settings.signin_rate, settings.rate_limit_storage_url)
        return cls(settings=settings, store=store, gateway=gateway, tasks=TaskService(store, gateway, settings),
                   gate=Gate(list(settings.access_tokens), session_key, failed_signins, store, settings.session_max_age,
                             behind_proxy=settings.on_vercel),
                   queue_rate=RateLimit(settings.queue_rate, settings.rate_limit_storage_url), failed_signins=failed_signins,
                   budgets=Budgets(settings.daily_budget_usd, settings.app_daily_budget_usd), emulator=emulator)

    @staticmethod
    def of(request) -> "Services":
        return request.app.state.services

    @property
    def exposed(self) -> bool:
        "Open to anyone on a public host while spending a real key."
        return self.settings.on_vercel and not self.settings.access_tokens and not self.settings.demo

    async def close(self):
        await self.tasks.progress.close()
        await self.store.close()
        if self.emulator: await self.emulator.stop()
        await self.gateway.close()
