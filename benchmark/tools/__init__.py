"""Tools around the judge: performance benchmarks and the regression replay."""
