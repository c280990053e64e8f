"""Stand-in: pyworld is not installed on this host (not on the benchmark's path)."""
