"""Enforcement: the decision-consumer SDK and the reference enforcers built on it."""
