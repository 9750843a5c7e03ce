"""What an operator sees: Prometheus metrics (`GET /metrics`), and logs as JSON lines (one per request, one per
task transition) that never hold a secret, nor a prompt unless LOG_PROMPTS=on.

Metrics count per process (each process or Vercel instance has its own): scrape each process, or sum them.
"""
import json
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # no `*_created` series: a counter's start time is the process's

REGISTRY = CollectorRegistry()
REQUESTS = Counter("app_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=REGISTRY)
LATENCY = Histogram("app_request_seconds", "Time to answer an HTTP request (to its end, for a stream), by route", ["route"],
                    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 60, 300), registry=REGISTRY)
TASKS = Counter("app_tasks", "Tasks queued, and tasks that reached each final status, by model", ["model", "status"],
                registry=REGISTRY)
WEBHOOKS = Counter("app_webhook_events", "Webhook deliveries, by event type and what was done", ["type", "result"],
                   registry=REGISTRY)
OPENAI_CALLS = Counter("app_openai_calls", "Calls to OpenAI, by operation", ["operation"], registry=REGISTRY)
OPENAI_ERRORS = Counter("app_openai_errors", "Calls to OpenAI that failed, by operation and kind", ["operation", "kind"],
                        registry=REGISTRY)
OPEN_STREAMS = Gauge("app_progress_streams_open", "Progress streams (GET /api/events) open now", registry=REGISTRY)
RELAYS = Counter("app_relays", "Relays of a task's OpenAI stream started here: at queueing, or taking over one that stopped",
                 ["how"], registry=REGISTRY)

log = logging.getLogger("app")


def metrics_text() -> bytes:
    return generate_latest(REGISTRY)


class JsonLines(logging.Formatter):
    "Each record as one JSON object: time, level, logger, message, and the record's `fields` (see `event`)."

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z", "level": record.levelname,
                "logger": record.name, "message": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info: line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_as_json(level: int = logging.INFO):
    "Send every log record to stderr as a JSON line (uvicorn's own lines too)."
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.Formatter.converter = time.gmtime
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers, logging.getLogger(name).propagate = [], True


def event(logger: logging.Logger, message: str, **fields):
    "Log one event with structured fields (never a secret; a prompt only where LOG_PROMPTS allows it)."
    logger.info(message, extra={"fields": fields})


class RequestMetrics:
    "ASGI middleware: one log line and the metrics of each HTTP request, labelled by its route (not its path)."

    def __init__(self, app):
        self.app, self._counted, self._timed = app, {}, {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http": return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def noting_status(message):
            if message["type"] == "http.response.start": status[0] = message["status"]
            await send(message)
        try: await self.app(scope, receive, noting_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            seconds = time.perf_counter() - started
            key = (route, status[0])
            counted = self._counted.get(key) or self._counted.setdefault(key, REQUESTS.labels(route, str(status[0])))
            timed = self._timed.get(route) or self._timed.setdefault(route, LATENCY.labels(route))
            counted.inc()
            timed.observe(seconds)
            event(log, "request", method=scope["method"], route=route, status=status[0], ms=round(seconds * 1000, 2))
