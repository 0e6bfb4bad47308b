"""What the benchmarks share: bootstrap intervals and the RESULT lines they end with."""
