"""The models the app offers, as data: reasoning efforts, summaries, data-source needs, tools and published prices.

Efforts are those each model's page and OpenAI's validation errors list; prices are the standard tier of
https://platform.openai.com/docs/pricing (US dollars per million tokens; web search per 1,000 calls).
A model named in OPENAI_MODELS but not here is offered with the model's own default effort and no price.
"""
from dataclasses import dataclass

PRICING_PAGE = "https://platform.openai.com/docs/pricing"
GPT5_EFFORTS = ("minimal", "low", "medium", "high")
O_SERIES_EFFORTS = ("low", "medium", "high")
SUMMARY = "auto"
WEB_SEARCH_PER_1K = 10.0


@dataclass(frozen=True)
class Model:
    name: str
    efforts: tuple[str, ...] = ()
    summaries: bool = False
    deep_research: bool = False
    input_per_m: float | None = None
    cached_input_per_m: float | None = None
    output_per_m: float | None = None
    web_search_per_1k: float | None = WEB_SEARCH_PER_1K
    search_input_tokens: int = 0  # a fixed block of input tokens billed per web search (usage counts them)
    temperature: bool = False  # a reasoning model that still takes `temperature`

    @property
    def reasoning(self) -> bool: return bool(self.efforts)

    @property
    def takes_temperature(self) -> bool: return self.temperature or not self.reasoning

    @property
    def web_search_tool(self) -> str:
        "Deep research accepts only the preview web search tool; other models take `web_search`."
        return "web_search_preview" if self.deep_research else "web_search"

    @property
    def page(self) -> str: return f"https://platform.openai.com/docs/models/{self.name}"

    @property
    def priced(self) -> bool: return self.input_per_m is not None and self.output_per_m is not None


MODELS = {model.name: model for model in (
    Model("gpt-5-mini", GPT5_EFFORTS, True, input_per_m=0.25, cached_input_per_m=0.025, output_per_m=2.0),
    Model("gpt-5", GPT5_EFFORTS, True, input_per_m=1.25, cached_input_per_m=0.125, output_per_m=10.0),
    Model("gpt-5-nano", GPT5_EFFORTS, True, input_per_m=0.05, cached_input_per_m=0.005, output_per_m=0.40),
    Model("gpt-5.1", ("none", "low", "medium", "high"), True, input_per_m=1.25, cached_input_per_m=0.125, output_per_m=10.0,
          temperature=True),
    Model("gpt-5.2", ("none", "low", "medium", "high", "xhigh"), True, input_per_m=1.75, cached_input_per_m=0.175,
          output_per_m=14.0, temperature=True),
    Model("o3", O_SERIES_EFFORTS, True, input_per_m=2.0, cached_input_per_m=0.5, output_per_m=8.0),
    Model("o4-mini", O_SERIES_EFFORTS, True, input_per_m=1.10, cached_input_per_m=0.275, output_per_m=4.40),
    Model("o3-deep-research", ("medium",), True, True, input_per_m=10.0, cached_input_per_m=2.5, output_per_m=40.0),
    Model("o4-mini-deep-research", ("medium",), True, True, input_per_m=2.0, cached_input_per_m=0.5, output_per_m=8.0),
    Model("gpt-4.1", input_per_m=2.0, cached_input_per_m=0.5, output_per_m=8.0),
    Model("gpt-4.1-mini", input_per_m=0.40, cached_input_per_m=0.10, output_per_m=1.60, search_input_tokens=8000),
)}


def model_named(name: str) -> Model:
    "The table's entry, or for a model only OPENAI_MODELS names, one with no effort choice and no price."
    return MODELS.get(name) or Model(name, web_search_per_1k=None)


def tool_params(model: Model, tools: list[str], vector_store_ids: tuple[str, ...],
                mcp_servers: tuple[tuple[str, str], ...]) -> list[dict]:
    "The Responses API `tools` for the tool names a task asked for (web_search, file_search, mcp)."
    params = []
    if "web_search" in tools: params.append({"type": model.web_search_tool})
    if "file_search" in tools:
        params.append({"type": "file_search", "vector_store_ids": list(vector_store_ids[:2] if model.deep_research
                                                                       else vector_store_ids)})
    if "mcp" in tools:
        params += [{"type": "mcp", "server_label": label, "server_url": url, "require_approval": "never"}
                   for label, url in mcp_servers]
    return params


def cost_usd(model: Model, usage: dict | None, web_searches: int = 0) -> float | None:
    "An estimate of what a response cost at the published prices; None for a model without a price."
    if not model.priced: return None
    usage = usage or {}
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
    fresh = max(0, (usage.get("input_tokens") or 0) - cached)
    cost = (fresh * model.input_per_m + cached * (model.cached_input_per_m or model.input_per_m)
            + (usage.get("output_tokens") or 0) * model.output_per_m) / 1e6
    return round(cost + web_searches * (model.web_search_per_1k or 0) / 1000, 6)


def cost_bound_usd(model: Model, prompt: str, tools: list[str], max_output_tokens: int | None,
                   max_tool_calls: int | None) -> float:
    """What a queued response may cost, for spend budgets: its input (a token is taken as 3 characters, erring high),
    plus its output and web searches where `max_output_tokens` and `max_tool_calls` bound them (unbounded: 0)."""
    if not model.priced: return 0.0
    searches = (max_tool_calls or 0) if "web_search" in tools else 0
    return cost_usd(model, {"input_tokens": len(prompt) // 3 + 50, "output_tokens": max_output_tokens or 0}, searches)
