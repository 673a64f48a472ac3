"""Embedded development services: a Kafka-compatible broker (Tansu) and Redis, no Docker needed."""
