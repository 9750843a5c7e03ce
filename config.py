"""Settings: every environment variable the app reads, written once in VARIABLES, read and checked once at start.

A wrong value stops the app (SystemExit) with a message that says how to fix it. `python config.py`
prints env.example from the same table.
"""
import base64
import os
import re
import secrets
from dataclasses import dataclass, field

import limits

from models import MODELS

SQLITE_PREFIX, POSTGRES_PREFIXES = "sqlite:", ("postgresql:", "postgres:", "postgresql+psycopg:")
SECRET_HINT = "make one with: python -c 'import secrets; print(secrets.token_hex(32))'"


def new_webhook_secret() -> str:
    "A fresh secret in OpenAI's `whsec_<base64>` form."
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Invalid(ValueError):
    "A value a parser refuses; the message says what was expected."


def text(raw: str) -> str: return raw


def whole_number(raw: str) -> int:
    try: value = int(raw)
    except ValueError: raise Invalid("is not a whole number") from None
    if value < 0: raise Invalid("must not be negative")
    return value


def seconds(raw: str) -> float | None:
    if not raw: return None
    try: value = float(raw)
    except ValueError: raise Invalid("is not a number of seconds") from None
    if not value >= 0: raise Invalid("must be 0 or more")
    return value


def switch(raw: str) -> bool:
    value = raw.lower()
    if value not in ("on", "off", "1", "0", "true", "false", "yes", "no"): raise Invalid("must be on or off")
    return value in ("on", "1", "true", "yes")


def names(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item.strip() for item in raw.split(",") if item.strip()))


def dollars(raw: str) -> float | None:
    if not raw: return None
    try: value = float(raw)
    except ValueError: raise Invalid("is not an amount of US dollars, such as 5 or 12.50") from None
    if not value > 0: raise Invalid("must be more than 0 (leave it unset for no budget)")
    return value


def labelled_urls(raw: str) -> tuple[tuple[str, str], ...]:
    "label=https://url pairs, comma-separated."
    pairs = []
    for item in names(raw):
        label, sep, url = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", label.strip()) or not url.strip().startswith("https://"):
            raise Invalid("must be label=https://server/url pairs, comma-separated (a label is letters, digits, _ or -)")
        pairs.append((label.strip(), url.strip()))
    return tuple(pairs)


def rate(raw: str) -> str:
    try: limits.parse(raw)
    except ValueError: raise Invalid("is not a rate: write it like 10/minute or 100/hour") from None
    return raw


def database_url(raw: str) -> str:
    if raw.startswith(POSTGRES_PREFIXES): return raw
    if not raw.startswith(SQLITE_PREFIX):
        raise Invalid("must start with sqlite:/// or postgresql://")
    if not raw.partition(":///")[2]:
        raise Invalid("write sqlite:///data/tasks.db (a relative path) or sqlite:////abs/path.db")
    return raw


@dataclass(frozen=True)
class Variable:
    name: str
    attribute: str
    default: str
    parse: object
    help: str


VARIABLES = (
    Variable("OPENAI_API_KEY", "openai_api_key", "", text,
             "Your OpenAI API key. Unset = demo mode: a local emulator answers, nothing leaves the machine."),
    Variable("OPENAI_WEBHOOK_SECRET", "webhook_secret", "", text,
             "The signing secret of your webhook endpoint (whsec_...), from the webhook's page in the OpenAI dashboard; "
             "in demo mode one is made at start-up when unset."),
    Variable("OPENAI_BASE_URL", "base_url", "", text,
             "Another OpenAI-compatible endpoint (a proxy, or `python emulator.py` at http://127.0.0.1:8001/v1). Unset = OpenAI."),
    Variable("OPENAI_MODEL", "model", "gpt-5-mini", text, "The model prompts run on by default."),
    Variable("OPENAI_MODELS", "models", "", names,
             "More models the form offers and the API accepts, comma-separated (OPENAI_MODEL is always allowed)."),
    Variable("OPENAI_VECTOR_STORE_IDS", "vector_store_ids", "", names,
             "Vector store ids (vs_...) that the File search tool searches, comma-separated (deep research takes at most 2)."),
    Variable("OPENAI_MCP_SERVERS", "mcp_servers", "", labelled_urls,
             "Remote MCP servers the MCP tool may call, as label=https://url pairs, comma-separated (called without approval)."),
    Variable("DAILY_BUDGET_USD", "daily_budget_usd", "", dollars,
             "Most one owner (an access token, or a browser when the app is open) may spend a day, in US dollars (estimated)."),
    Variable("APP_DAILY_BUDGET_USD", "app_daily_budget_usd", "", dollars,
             "Most the whole app may spend a day (UTC), in US dollars (estimated from the models' prices)."),
    Variable("DATABASE_URL", "database_url", "sqlite:///data/tasks.db", database_url,
             "Where tasks are kept: sqlite:///relative/path.db, sqlite:////absolute/path.db, or "
             "postgresql://user:password@host:5432/dbname (required on Vercel and with several servers)."),
    Variable("SESSION_SECRET", "session_secret", "", text,
             f"The key that signs session cookies. Unset locally = one is kept in data/.sesskey. Required on Vercel ({SECRET_HINT})."),
    Variable("APP_ACCESS_TOKENS", "access_tokens", "", names,
             "Access tokens, comma-separated. Set = the page asks for one and the API needs `Authorization: Bearer <token>`."),
    Variable("SESSION_MAX_AGE", "session_max_age", "604800", whole_number,
             "How long a browser session lasts, in seconds (7 days); signing out ends it at once."),
    Variable("ALLOWED_HOSTS", "allowed_hosts", "127.0.0.1,localhost,[::1]", names,
             "Host names the app answers to, comma-separated (others get 400, which stops DNS rebinding); "
             "on Vercel its own host names are added; * allows any."),
    Variable("QUEUE_RATE", "queue_rate", "10/minute", rate,
             "How many prompts one owner may queue, e.g. 10/minute, 100/hour (the `limits` library's notation)."),
    Variable("SIGNIN_RATE", "signin_rate", "10/minute", rate,
             "How many wrong access tokens one address may try (sign-in form or Bearer header); past it every try is refused."),
    Variable("RATE_LIMIT_STORAGE_URL", "rate_limit_storage_url", "memory://", text,
             "Where rate limits count: memory:// (per process) or redis://host:6379 (shared by every process and Vercel instance)."),
    Variable("MAX_RUNNING_PER_OWNER", "max_running_per_owner", "5", whole_number,
             "How many tasks one owner may have running at once."),
    Variable("HOST", "host", "127.0.0.1", text, "The address `python app.py` listens on (0.0.0.0 to accept other machines)."),
    Variable("PORT", "port", "8000", whole_number, "The port `python app.py` serves on."),
    Variable("MAX_PROMPT_CHARS", "max_prompt_chars", "100000", whole_number,
             "The longest prompt accepted, in characters (a longer one gets 413)."),
    Variable("RECONCILE_SECONDS", "reconcile_seconds", "5", seconds,
             "Seconds between two checks of a running task with OpenAI when its webhook has not come (reading the task triggers them)."),
    Variable("EVENTS_MAX_SECONDS", "events_max_seconds", "", seconds,
             "How long one progress stream (GET /api/events/{id}) stays open before the browser reconnects "
             "(unset: 900, or 250 on Vercel, within its 300 s function limit)."),
    Variable("LOG_PROMPTS", "log_prompts", "off", switch,
             "Whether task log lines carry the prompt's text (off: only ids, model, status and cost)."),
    Variable("DEMO_DELAY_SECONDS", "demo_delay_seconds", "3", seconds, "Demo mode: how many seconds a made-up answer takes."),
    Variable("DEMO_WEBHOOKS", "demo_webhooks", "on", switch,
             "Demo mode: whether the emulator sends webhooks (off = tasks finish through reconcile only)."),
    Variable("EMULATOR_PORT", "emulator_port", "8001", whole_number, "`python emulator.py` (the emulator on its own): its port."),
    Variable("EMULATOR_WEBHOOK_URL", "emulator_webhook_url", "http://127.0.0.1:8000/api/webhook", text,
             "`python emulator.py`: where it delivers webhooks."),
    Variable("VERCEL", "on_vercel", "", lambda raw: bool(raw),
             "Set by Vercel itself: the app then requires SESSION_SECRET and DATABASE_URL, and warns when it runs open in OpenAI mode."),
    Variable("VERCEL_URL", "vercel_url", "", text, "Set by Vercel: the deployment's host name (allowed as a host)."),
    Variable("VERCEL_BRANCH_URL", "vercel_branch_url", "", text, "Set by Vercel: the branch's host name (allowed as a host)."),
    Variable("VERCEL_PROJECT_PRODUCTION_URL", "vercel_production_url", "", text,
             "Set by Vercel: the production host name (allowed as a host)."),
)
BY_ATTRIBUTE = {variable.attribute: variable for variable in VARIABLES}


def _default(attribute: str):
    variable = BY_ATTRIBUTE[attribute]
    return variable.parse(variable.default)


@dataclass(frozen=True)
class Settings:
    openai_api_key: str = _default("openai_api_key")
    webhook_secret: str = _default("webhook_secret")
    base_url: str = _default("base_url")
    model: str = _default("model")
    models: tuple[str, ...] = _default("models")
    vector_store_ids: tuple[str, ...] = _default("vector_store_ids")
    mcp_servers: tuple[tuple[str, str], ...] = _default("mcp_servers")
    daily_budget_usd: float | None = _default("daily_budget_usd")
    app_daily_budget_usd: float | None = _default("app_daily_budget_usd")
    database_url: str = _default("database_url")
    session_secret: str = _default("session_secret")
    access_tokens: tuple[str, ...] = _default("access_tokens")
    session_max_age: int = _default("session_max_age")
    allowed_hosts: tuple[str, ...] = _default("allowed_hosts")
    queue_rate: str = _default("queue_rate")
    signin_rate: str = _default("signin_rate")
    rate_limit_storage_url: str = _default("rate_limit_storage_url")
    max_running_per_owner: int = _default("max_running_per_owner")
    host: str = _default("host")
    port: int = _default("port")
    max_prompt_chars: int = _default("max_prompt_chars")
    reconcile_seconds: float = _default("reconcile_seconds")
    events_max_seconds: float | None = _default("events_max_seconds")
    log_prompts: bool = _default("log_prompts")
    demo_delay_seconds: float = _default("demo_delay_seconds")
    demo_webhooks: bool = _default("demo_webhooks")
    emulator_port: int = _default("emulator_port")
    emulator_webhook_url: str = _default("emulator_webhook_url")
    on_vercel: bool = _default("on_vercel")
    vercel_url: str = _default("vercel_url")
    vercel_branch_url: str = _default("vercel_branch_url")
    vercel_production_url: str = _default("vercel_production_url")
    generated_secret: str = field(default_factory=new_webhook_secret)

    def __post_init__(self):
        "Checks that span several variables, so that settings made in code (tests) are held to them too."
        for attribute in ("database_url", "queue_rate", "signin_rate"):
            _checked(BY_ATTRIBUTE[attribute], str(getattr(self, attribute)))
        if self.on_vercel and not self.session_secret:
            raise SystemExit(f"SESSION_SECRET is not set: on Vercel sessions need a fixed key. Set it in the project's "
                             f"Environment Variables ({SECRET_HINT})")
        if self.on_vercel and self.database_url == BY_ATTRIBUTE["database_url"].default:
            raise SystemExit("DATABASE_URL is not set: on Vercel the default SQLite file would sit on a read-only disk, and "
                             "each instance has its own memory. Create a PostgreSQL database (Vercel Marketplace: Neon, "
                             "Supabase, ...) and set DATABASE_URL=postgresql://... in the project's Environment Variables")

    @property
    def demo(self) -> bool: return not self.openai_api_key

    @property
    def mode(self) -> str: return "demo" if self.demo else "openai"

    @property
    def effective_webhook_secret(self) -> str:
        "The secret webhooks are checked with: the configured one, or in demo mode one made at start-up."
        return self.webhook_secret or (self.generated_secret if self.demo else "")

    @property
    def allowed_models(self) -> tuple[str, ...]:
        "The models offered: OPENAI_MODEL, then the app's table of models, then OPENAI_MODELS."
        return tuple(dict.fromkeys((self.model, *MODELS, *self.models)))

    @property
    def tools(self) -> tuple[str, ...]:
        "The tools a prompt may use here: web search always; file search and MCP when configured."
        return ("web_search",) + (("file_search",) if self.vector_store_ids else ()) + (("mcp",) if self.mcp_servers else ())

    @property
    def stream_seconds(self) -> float:
        "How long one progress stream stays open: EVENTS_MAX_SECONDS, or a default within Vercel's function limit."
        return self.events_max_seconds or (250.0 if self.on_vercel else 900.0)

    @property
    def hosts(self) -> tuple[str, ...]:
        "The Host names answered: ALLOWED_HOSTS, and on Vercel the deployment's own."
        vercel = (self.vercel_url, self.vercel_branch_url, self.vercel_production_url) if self.on_vercel else ()
        return tuple(dict.fromkeys(host.lower() for host in (*self.allowed_hosts, *vercel) if host))

    @property
    def store_kind(self) -> str: return "sqlite" if self.database_url.startswith(SQLITE_PREFIX) else "postgresql"

    @property
    def max_body_bytes(self) -> int:
        "Largest request body read: a prompt of the allowed length in 4-byte UTF-8, plus room for the form."
        return self.max_prompt_chars * 4 + 64 * 1024


def _checked(variable: Variable, raw: str):
    try: return variable.parse(raw)
    except Invalid as exc:
        got = f"it starts {raw.split(':', 1)[0]!r}" if variable.attribute == "database_url" else f"got {raw[:80]!r}"
        raise SystemExit(f"{variable.name} {exc} ({got}): fix it in your environment or .env. {variable.help}") from None


def read_dotenv(path: str = ".env") -> dict[str, str]:
    "KEY=VALUE lines of a .env file."
    if not os.path.exists(path): return {}
    values = {}
    for line in open(path, encoding="utf-8"):
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"): values[key.strip()] = value.strip().strip("'\"")
    return values


def load_settings(environ=None, dotenv: str = ".env") -> Settings:
    "Settings from the environment, then .env for what the environment leaves unset."
    environ = {**read_dotenv(dotenv), **(os.environ if environ is None else environ)}
    values = {}
    for variable in VARIABLES:
        raw = str(environ.get(variable.name, "")).strip()
        values[variable.attribute] = _checked(variable, raw) if raw else variable.parse(variable.default)
    return Settings(**values)


def env_example() -> str:
    "env.example: each variable with its one-line help and its default."
    lines = ["# Copy to .env (or export these) to configure the app. Every variable is optional for a local demo.", ""]
    for variable in VARIABLES:
        platform = variable.name.startswith("VERCEL")
        lines += [f"# {variable.help}", f"{'# ' if platform else ''}{variable.name}={variable.default}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(env_example(), end="")
