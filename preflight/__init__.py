"""lane-preflight: make a model volume provably ready before inference starts."""

__version__ = "0.1.0"
