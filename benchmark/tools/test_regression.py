"""Replays every recorded leaderboard number: `pytest benchmark -k fashion_mnist` (or imagenet, ...).

One test per (entry, recorded measurement), with ids such as `fashion_mnist-A_adv-pgd`; see
`benchmark/tools/regression.py` for what is compared and when a test skips.
"""

from __future__ import annotations

import pytest

from benchmark.tools.regression import MissingResource, compare, regression_cases, unmeasured_reason

CASES = regression_cases()


# One xdist worker per record: its replay is computed once (cached) and shared by its measurements.
PARAMS = [pytest.param(case, id=case.test_id,
                       marks=pytest.mark.xdist_group(f"{case.dataset}-{case.entry}")) for case in CASES]


@pytest.mark.parametrize("case", PARAMS)
def test_recorded_measurement_replays(case):
    if case.record_path is None:
        pytest.skip(unmeasured_reason(case))
    try:
        compare(case.record_path, case.measurement)
    except MissingResource as missing:
        pytest.skip(str(missing))
