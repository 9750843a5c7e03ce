"""Settings read once from the environment (env.example documents each)."""
import base64
import os
import secrets
from dataclasses import dataclass, field


def new_webhook_secret() -> str:
    "A fresh secret in OpenAI's `whsec_<base64>` form."
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw: return default
    try: return int(raw)
    except ValueError: raise SystemExit(f"{name}={raw!r} is not a whole number: fix it in your environment or .env")


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw: return default
    try: return float(raw)
    except ValueError: raise SystemExit(f"{name}={raw!r} is not a number: fix it in your environment or .env")


def _list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


@dataclass(frozen=True)
class Settings:
    openai_api_key: str = ""
    webhook_secret: str = ""
    base_url: str | None = None
    model: str = "gpt-5-mini"
    models: tuple[str, ...] = ()
    database_url: str = "sqlite:///data/tasks.db"
    session_secret: str = ""
    port: int = 8000
    max_prompt_chars: int = 100_000
    demo_delay_seconds: float = 3.0
    demo_webhooks: bool = True
    reconcile_seconds: float = 5.0
    access_tokens: tuple[str, ...] = ()
    queue_rate: str = "10/minute"
    rate_limit_storage_url: str = "memory://"
    max_running_per_owner: int = 5
    on_vercel: bool = False
    generated_secret: str = field(default_factory=new_webhook_secret)

    @property
    def demo(self) -> bool: return not self.openai_api_key

    @property
    def mode(self) -> str: return "demo" if self.demo else "openai"

    @property
    def effective_webhook_secret(self) -> str:
        "The secret webhooks are checked with: the configured one, or in demo mode one made at start-up."
        return self.webhook_secret or (self.generated_secret if self.demo else "")

    @property
    def allowed_models(self) -> tuple[str, ...]: return self.models or (self.model,)

    @property
    def max_body_bytes(self) -> int:
        "Largest request body read: a prompt of the allowed length in 4-byte UTF-8, plus room for the form."
        return self.max_prompt_chars * 4 + 64 * 1024


def load_dotenv(path: str = ".env"):
    "Read KEY=VALUE lines from .env into the environment; variables already set win."
    if not os.path.exists(path): return
    for line in open(path, encoding="utf-8"):
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"): os.environ.setdefault(key.strip(), value.strip().strip("'\""))


def load_settings() -> Settings:
    load_dotenv()
    model = os.environ.get("OPENAI_MODEL", "").strip() or "gpt-5-mini"
    return Settings(
        openai_api_key=os.environ.get("OPENAI_API_KEY", "").strip(),
        webhook_secret=os.environ.get("OPENAI_WEBHOOK_SECRET", "").strip(),
        base_url=os.environ.get("OPENAI_BASE_URL", "").strip() or None,
        model=model,
        models=tuple(dict.fromkeys([model, *_list("OPENAI_MODELS")])),
        database_url=os.environ.get("DATABASE_URL", "").strip() or "sqlite:///data/tasks.db",
        session_secret=os.environ.get("SESSION_SECRET", "").strip(),
        port=_int("PORT", 8000),
        max_prompt_chars=_int("MAX_PROMPT_CHARS", 100_000),
        demo_delay_seconds=_float("DEMO_DELAY_SECONDS", 3.0),
        demo_webhooks=os.environ.get("DEMO_WEBHOOKS", "on").strip().lower() not in ("off", "0", "false", "no"),
        reconcile_seconds=_float("RECONCILE_SECONDS", 5.0),
        access_tokens=tuple(_list("APP_ACCESS_TOKENS")),
        queue_rate=os.environ.get("QUEUE_RATE", "").strip() or "10/minute",
        rate_limit_storage_url=os.environ.get("RATE_LIMIT_STORAGE_URL", "").strip() or "memory://",
        max_running_per_owner=_int("MAX_RUNNING_PER_OWNER", 5),
        on_vercel=bool(os.environ.get("VERCEL")),
    )
