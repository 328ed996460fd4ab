"""Rate history, baselines, recommendations and backtests (docs/history.md)."""
