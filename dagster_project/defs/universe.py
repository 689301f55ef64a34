"""The symbol universe as data: a sensor adds each new symbol as a dynamic partition of the raw assets.

QML_UNIVERSE=configured takes QML_SYMBOLS; QML_UNIVERSE=binance_usdm asks Binance's exchangeInfo for every
USD-M perpetual (qml_pipeline/sources/universe.py). A symbol is only ever added: a delisted one keeps its
partitions and history, and removing one is a deliberate act in the UI. No code change or reload is needed:
the partitions live in the Dagster instance, and the daily refresh reads them when it runs.
"""

import dagster as dg

from dagster_project.partitions import SYMBOLS, new_symbols
from dagster_project.resources import MarketDataResource

UNIVERSE_INTERVAL_S = 3600


@dg.sensor(minimum_interval_seconds=UNIVERSE_INTERVAL_S, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Hourly: add the symbols of the configured universe (QML_UNIVERSE: QML_SYMBOLS or Binance's "
                       "USD-M perpetuals) that are not partitions yet. Never removes one.")
def symbol_universe(context: dg.SensorEvaluationContext, market: MarketDataResource) -> dg.SensorResult | dg.SkipReason:
    universe = market.universe_symbols()
    new = new_symbols(context.instance, universe.symbols)
    if universe.refused:
        context.log.warning(f"not usable as symbols: {'; '.join(universe.refused)}")
    if not new:
        return dg.SkipReason(f"no new symbol ({universe.describe()})")
    context.log.info(f"adding {len(new)} symbol(s): {', '.join(new[:20])}{', ...' if len(new) > 20 else ''} "
                     f"({universe.describe()})")
    return dg.SensorResult(dynamic_partitions_requests=[SYMBOLS.build_add_request(new)])
