"""Signals: fingerprints computed from media (exact hashes here; perceptual hashes build on it)."""
