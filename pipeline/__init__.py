"""modstream: an event-streaming content-moderation pipeline on Kafka."""

__version__ = "0.1.0"
