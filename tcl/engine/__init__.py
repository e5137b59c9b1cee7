"""The training engine (the only part of the project that imports accelerate)."""
