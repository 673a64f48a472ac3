"""SDKs for platform backends (producer) and enforcement services (see pipeline.enforce.consumer)."""

from pipeline.sdk.producer import DeliveryError, ModerationProducer, RecordTooLarge

__all__ = ["DeliveryError", "ModerationProducer", "RecordTooLarge"]
