-- Each trade with its point-in-time derivatives context (docs/features.md). Trades without a
-- feature row (not built yet) keep NULL features. Needs tables trades and trade_context_features.
CREATE OR REPLACE VIEW v_trade_context AS
SELECT t.*,
       f.* EXCLUDE (trade_id, symbol, timeframe, direction, decision_time)
FROM trades AS t
LEFT JOIN trade_context_features AS f USING (trade_id);
