"""Raw assets are partitioned by symbol and UTC day: keys look like `BTCUSDT|2024-01-31`.

The symbol dimension sorts first, so a key range `BTCUSDT|2024-01-01...BTCUSDT|2024-12-31` is one
symbol's date range: a backfill or a scheduled refresh runs one run per symbol-range.
"""

import dagster as dg

from dagster_project.resources import SETTINGS

SYMBOLS = dg.StaticPartitionsDefinition(list(SETTINGS.symbols))
DAYS = dg.DailyPartitionsDefinition(start_date=SETTINGS.start_date, end_offset=1, timezone="UTC")
RAW_PARTITIONS = dg.MultiPartitionsDefinition({"symbol": SYMBOLS, "utc_day": DAYS})


def range_tags(symbol: str, first_day: str, last_day: str) -> dict[str, str]:
    """Run tags that make one run cover `symbol` from `first_day` to `last_day` (inclusive)."""
    return {
        "dagster/asset_partition_range_start": f"{symbol}|{first_day}",
        "dagster/asset_partition_range_end": f"{symbol}|{last_day}",
    }
