"""The producer SDK checks the hashes an upload brings before anything is sent."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.sdk import ModerationProducer


class Captured(ModerationProducer):
    def __init__(self) -> None:
        super().__init__(Settings(bootstrap_servers="127.0.0.1:1"))
        self.sent: list[tuple[str, Any]] = []

    def send(self, topic: str, event: dict[str, Any], key: str | None = None) -> str:
        self.sent.append((topic, event))
        return str(event["envelope"]["event_id"])


def test_ready_hashes_are_normalised_and_perceptual_ones_trusted() -> None:
    producer = Captured()
    producer.send_upload("c1", "u1", signals={" PDQ ": "AB" * 32, "sha256": "cd" * 32})
    [(topic, event)] = producer.sent
    assert topic == "uploads"
    assert event["signals"] == [
        {"signal_type": "pdq", "value": "ab" * 32, "quality": 100, "frame": None},
        {"signal_type": "sha256", "value": "cd" * 32, "quality": None, "frame": None},
    ]


@pytest.mark.parametrize(
    "hashes, why", [({"sha1": "ab" * 20}, "unknown signal type 'sha1'"), ({"md5": "xyz"}, "is not a md5 hash")]
)
def test_a_bad_hash_raises_before_anything_is_sent(hashes: dict[str, str], why: str) -> None:
    producer = Captured()
    with pytest.raises(ValueError, match=why):
        producer.send_upload("c1", "u1", signals=hashes)
    assert producer.sent == []
