"""threatbench: the judge. Spec, data, defense interface, attacks, evaluation and records."""

from benchmark.version import __version__ as __version__  # the one version: benchmark/version.py
