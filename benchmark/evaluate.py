"""Public API: judge a defense (`from benchmark.evaluate import evaluate`).

The code lives in `benchmark.evaluation`; this module keeps the documented import path stable.
"""

from benchmark.evaluation.loop import evaluate

__all__ = ["evaluate"]
