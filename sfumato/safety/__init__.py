"""Safety: a prompt policy checked before generation and an image classifier applied after it, by the engine."""
