"""Metrics, reports, plots and grids."""
