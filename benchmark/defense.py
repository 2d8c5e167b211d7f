"""Public API: the defense interface (`from benchmark.defense import Defense, load`).

The code lives in `benchmark.models.defense`; this module keeps the documented import path stable.
"""

from benchmark.models.defense import Defense, load

__all__ = ["Defense", "load"]
