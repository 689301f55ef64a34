-- The pattern cards decided in the 7 days before their as_of, newest first; each card's rules (applied or not, with
-- reason and size) are in pattern_card_adjustments (JOIN USING (trade_id) ORDER BY position). Another window: replace
-- 7 by N in this query (docs/cards.md), or ask the cards server for /cards/patterns?days=N.
CREATE OR REPLACE VIEW v_pattern_cards_recent AS
SELECT *
FROM pattern_cards
WHERE decision_time >= as_of - INTERVAL 7 DAY
ORDER BY decision_time DESC, trade_id DESC;
