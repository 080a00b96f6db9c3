"""Cost estimates for agent calls whose CLI reports tokens but no cost (layer: agents).

Prices come from `genai-prices` (PyPI, maintained by the Pydantic team): a price table of
the main providers' models with cache-read/write and tiered prices, shipped inside the
package, so an estimate needs no network (the package's optional live update is never
called). Judged against the alternatives: litellm's price map is a 40 MB dependency tree
and fetches its map from the network unless told not to; tokencost wraps the same map; a
table of our own would go stale the week it is written. An unknown model is no estimate:
the cost stays unknown.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=256)
def estimate_cost(model: str, tokens_in: int, tokens_out: int, tokens_cached: int = 0) -> float | None:
    """USD for one call's tokens (`tokens_in` includes `tokens_cached`), or None when the
    price table does not know `model`. `provider/model` names (aider's, opencode's) are
    looked up by their model part too."""
    try:
        from genai_prices import Usage as PriceUsage
        from genai_prices import calc_price
    except ImportError:  # the package is a declared dependency; a broken install estimates nothing
        return None
    usage = PriceUsage(input_tokens=tokens_in, output_tokens=tokens_out, cache_read_tokens=tokens_cached or None)
    for ref in dict.fromkeys((model, model.rsplit("/", 1)[-1])):
        try:
            price = calc_price(usage, model_ref=ref)
        except (LookupError, ValueError):
            continue
        return round(float(price.total_price), 6)
    return None
