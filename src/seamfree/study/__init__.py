"""The study: experiment grids reproducing the paper's trade-off, result tables, plots, and the demo."""
