-- The dashboard's command bar: per symbol, its newest context card (FUNDING, OI, LIQ: value, unit, status, direction,
-- age, rule; docs/cards.md). History: the context_cards table, one row per symbol and as_of.
CREATE OR REPLACE VIEW v_context_cards_latest AS
SELECT *
FROM context_cards
QUALIFY row_number() OVER (PARTITION BY symbol ORDER BY as_of DESC) = 1;
