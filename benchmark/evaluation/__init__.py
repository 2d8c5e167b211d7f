"""The evaluation: plan, loop, cascade, records and their verification, statistics, randomness, diagnostics."""
