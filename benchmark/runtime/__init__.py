"""Where and how the judge runs: cache, devices, processes, memory, precision, kernel options, provenance."""
