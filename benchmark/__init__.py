"""threatbench: the judge. Spec, data, defense interface, attacks, evaluation and records."""

__version__ = "0.1.0"
