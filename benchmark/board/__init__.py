"""Outputs: leaderboard pages, references, sweeps, comparisons and citations.

`from benchmark.board import table` is public API: a dataset's leaderboard as a pandas DataFrame.
"""

from benchmark.board.dataframe import table

__all__ = ["table"]
