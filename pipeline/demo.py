"""`modstream demo`: the whole pipeline on the embedded defaults, start to finish.

Creates the topics, banks the SHA-256 of one "known terrorist image" (an exact-hash
list, as partners share them), starts enrich, match and decide fused plus the logging
enforcer, and sends uploads and a report. The banned image is removed; its PDQ hash
enters the `removed` bank; then a mirrored, resized re-upload (a different file,
so a different SHA-256) is removed too, by perceptual match. Last, a live stream: the
platform marks its account verified, the stream starts and is allowed, and when it turns
into a re-broadcast of a banked video (re-encoded and rescaled), it is ended once.
Prints each decision.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

from PIL import ImageOps

from pipeline.app import App, run_all
from pipeline.config import Settings
from pipeline.dev.samples import clip, encode, frames, photo
from pipeline.records import new_id, now_ms, record_key
from pipeline.runtime.reader import read_topic
from pipeline.runtime.topics import create_topics
from pipeline.sdk import ModerationProducer
from pipeline.signals.media import MediaLimits, media_signals


def run_demo(settings: Settings, echo: Callable[[str], None] = print, timeout_s: float = 90.0) -> bool:
    create_topics(settings)
    run_id = new_id()[:8]
    banned_image = photo(7)
    banned = encode(banned_image, quality=90)
    banned_hash = hashlib.sha256(banned).hexdigest()
    with ModerationProducer(settings) as producer:
        entry = {
            "bank": "demo",
            "signal_type": "sha256",
            "hash": banned_hash,
            "category": "terrorism",
            "severity": "critical",
            "source": "demo",
            "added_at": now_ms(),
            "item_id": None,
        }
        producer.send("banks", entry, key=record_key("banks", entry))
    echo(f"banked sha256 {banned_hash[:16]}… (terrorism, critical)")

    app = App(settings)
    runners = app.runners(["all"])
    worker = threading.Thread(target=run_all, args=(runners,), daemon=True)
    worker.start()
    seen: set[str] = set()
    sent: dict[str, str] = {}
    try:
        with ModerationProducer(settings) as producer:
            sent[producer.send_upload(f"{run_id}-holiday", "alice", media=encode(photo(1)), text="my holiday")] = (
                "clean photo"
            )
            sent[producer.send_upload(f"{run_id}-banned", "mallory", media=banned, text="watch this")] = "banned image"
            sent[producer.send_upload(f"{run_id}-text", "bob", text="lovely weather today")] = "text only"
            for reporter in ("carol", "dave", "erin"):  # three distinct reporters: one review task
                sent[producer.send_report(f"{run_id}-holiday", reporter, "hate", text="offensive?")] = (
                    f"report by {reporter}"
                )
        echo(f"sent {len(sent)} events; waiting for decisions")
        seen |= _print_decisions(settings, sent, echo, timeout_s)
        copy = encode(ImageOps.mirror(banned_image).resize((480, 360)), quality=60)
        echo("re-uploading the removed image mirrored, resized and re-encoded (a new SHA-256)")
        time.sleep(1.0)  # the match stage applies the `removed` bank entries within a second
        with ModerationProducer(settings) as producer:
            sent[producer.send_upload(f"{run_id}-reupload", "mallory2", media=copy)] = "transformed copy"
        seen |= _print_decisions(settings, sent, echo, timeout_s, skip=seen)
        seen |= _live(settings, run_id, sent, echo, timeout_s, seen)
    finally:
        for r in runners:
            r.stop()
        worker.join(30)
        app.close()
    ok = seen == set(sent)
    echo("demo complete" if ok else f"demo incomplete: {len(sent) - len(seen)} events without a decision")
    return ok


def _live(
    settings: Settings, run_id: str, sent: dict[str, str], echo: Callable[[str], None], timeout_s: float, seen: set[str]
) -> set[str]:
    """A verified account goes live; its stream turns into a banked video and is ended."""
    attack = clip(11, seconds=10)
    with ModerationProducer(settings) as producer:
        for s in media_signals(attack, MediaLimits()):
            if s["signal_type"] == "video_pdq":
                entry = {
                    "bank": "demo",
                    "signal_type": "video_pdq",
                    "hash": s["value"],
                    "category": "terrorism",
                    "severity": "critical",
                    "source": "demo",
                    "added_at": now_ms(),
                    "item_id": "attack-video",
                }
                producer.send("banks", entry, key=record_key("banks", entry))
        producer.send_account_update("frank", "identity_verified", actor="demo-kyc")
    echo("banked the frames of an attack video; frank's identity is verified")
    time.sleep(1.0)
    stream, found = f"{run_id}-live", set()
    with ModerationProducer(settings) as producer:
        sent[producer.send_live_started(stream, "frank", title="morning run")] = "stream started"
    found |= _print_decisions(settings, sent, echo, timeout_s, skip=seen, subject="stream_id")
    benign = [encode(photo(500 + i, (480, 360)), quality=80) for i in range(3)]
    rebroadcast = frames(attack, size=(480, 360))  # re-encoded and rescaled, one frame a second
    echo(f"stream sends {len(benign)} frames of its own, then the attack video re-broadcast")
    with ModerationProducer(settings) as producer:
        for i, frame in enumerate(benign + rebroadcast):
            event_id = producer.send_live_frame(stream, "frank", i, frame)
            sent[event_id] = f"frame {i}" + (" (copy)" if i >= len(benign) else "")
            producer.flush()
            time.sleep(0.2)
    ended = _print_decisions(
        settings,
        sent,
        echo,
        timeout_s,
        skip=seen | found,
        subject="stream_id",
        until=lambda d: d["action"] == "end_stream",
    )
    frames_sent = {e for e, what in sent.items() if what.startswith("frame")}
    return found | frames_sent if ended else found  # frames need no decision of their own


def _print_decisions(
    settings: Settings,
    sent: dict[str, str],
    echo: Callable[[str], None],
    timeout_s: float,
    skip: frozenset[str] | set[str] = frozenset(),
    subject: str = "content_id",
    until: Callable[[dict[str, Any]], bool] | None = None,
) -> set[str]:
    """Prints the decisions on the events of `sent` (not in `skip`) until each has one, or
    until one satisfies `until`."""
    wanted = set(sent) - skip
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    for _, d in read_topic(settings, "decisions", from_beginning=True, idle_timeout_s=timeout_s):
        if time.monotonic() > deadline:
            break
        event_id = (d or {}).get("envelope", {}).get("event_id")
        if d is None or event_id not in wanted or event_id in seen:
            continue
        seen.add(event_id)
        what = sent[event_id]
        echo(f"{d['action'].upper():11} {d['envelope'][subject]:18} {what:17} rule={d['rule_id']}: {d['explanation']}")
        if (until is None and seen == wanted) or (until is not None and until(d)):
            break
    return seen
