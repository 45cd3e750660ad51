"""One-command reproduction (cells cached by config) and the report (tables, plots, sample grids)."""
