"""The stages, one module each. A stage is plain Python: no Kafka or Redis client imports here."""
