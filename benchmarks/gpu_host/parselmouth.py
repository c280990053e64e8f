"""Stand-in: parselmouth is not installed on this host (not on the benchmark's path)."""
