"""Figures for each benchmark, drawn from results DataFrames with matplotlib."""
