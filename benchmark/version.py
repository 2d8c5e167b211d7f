"""The one version scheme a citation names (README.md, "How to cite"):

- the package: `__version__`, semantic versioning; pyproject.toml says the same (a test checks);
- the threat-model spec: the `version` inside `benchmark/spec/v<major>.toml`. The files are frozen
  (records pin their sha256), so a new threat model is a new major version in a new file;
- a leaderboard release: both together, with the date of the newest record the page shows, on the
  first line of every generated page ("threatbench 0.2.0, spec 2.0.0, data as of 2026-12-02").
"""

from __future__ import annotations

# A constant, not importlib.metadata: an editable install keeps the version it was installed with,
# and the generated pages must not depend on which install renders them.
__version__ = "0.2.0"


def release(spec_version: str) -> str:
    """The leaderboard release identifier: this threatbench and the spec it judges with."""
    return f"threatbench {__version__}, spec {spec_version}"
