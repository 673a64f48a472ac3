"""Shared state outside Kafka (Redis): accounts, and later report aggregation."""
