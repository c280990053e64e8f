"""MLX models: the RVC synthesizer (`synthesizer`), its parts, and the shared conv layers (`conv`)."""
