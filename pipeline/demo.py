"""`modstream demo`: the whole pipeline on the embedded defaults, start to finish.

Creates the topics, banks the SHA-256 of one "known terrorist video", starts
enrich, match and decide fused plus the logging enforcer, sends a few uploads
(one of them the banned file) and a report, prints each decision and exits.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from pipeline.config import Settings
from pipeline.records import new_id, now_ms, record_key
from pipeline.runtime.app import App, run_all
from pipeline.runtime.reader import read_topic
from pipeline.runtime.topics import create_topics
from pipeline.sdk import ModerationProducer

BANNED = b"\x00\x00\x00\x18ftypmp42 demo: a video a hash bank knows" * 64


def run_demo(settings: Settings, echo: Callable[[str], None] = print, timeout_s: float = 90.0) -> bool:
    create_topics(settings)
    run_id = new_id()[:8]
    banned_hash = hashlib.sha256(BANNED).hexdigest()
    with ModerationProducer(settings) as producer:
        entry = {
            "bank": "demo",
            "signal_type": "sha256",
            "hash": banned_hash,
            "category": "terrorism",
            "severity": "critical",
            "source": "demo",
            "added_at": now_ms(),
        }
        producer.send("banks", entry, key=record_key("banks", entry))
    echo(f"banked sha256 {banned_hash[:16]}… (terrorism, critical)")

    app = App(settings)
    runners = app.runners(["all"])
    worker = threading.Thread(target=run_all, args=(runners,), daemon=True)
    worker.start()
    try:
        with ModerationProducer(settings) as producer:
            sent = {
                producer.send_upload(
                    f"{run_id}-cat", "alice", media=b"a cat photo" * 100, text="my cat"
                ): "clean upload",
                producer.send_upload(
                    f"{run_id}-video", "mallory", media=BANNED, text="watch this"
                ): "banned file",
                producer.send_upload(f"{run_id}-reupload", "mallory2", media=BANNED): "banned file again",
                producer.send_upload(f"{run_id}-text", "bob", text="lovely weather today"): "text only",
                producer.send_report(f"{run_id}-cat", "carol", "hate", text="offensive?"): "user report",
            }
        echo(f"sent {len(sent)} events; waiting for decisions")
        seen = _print_decisions(settings, sent, echo, timeout_s)
    finally:
        for r in runners:
            r.stop()
        worker.join(30)
        app.close()
    ok = seen == set(sent)
    echo("demo complete" if ok else f"demo incomplete: {len(sent) - len(seen)} events without a decision")
    return ok


def _print_decisions(
    settings: Settings, sent: dict[str, str], echo: Callable[[str], None], timeout_s: float
) -> set[str]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    for _, d in read_topic(settings, "decisions", from_beginning=True, idle_timeout_s=timeout_s):
        if time.monotonic() > deadline:
            break
        if d is None or d.get("envelope", {}).get("event_id") not in sent:
            continue
        event_id = d["envelope"]["event_id"]
        if event_id in seen:
            continue
        seen.add(event_id)
        subject, what = d["envelope"]["content_id"], sent[event_id]
        echo(f"{d['action'].upper():8} {subject:22} {what:18} rule={d['rule_id']}: {d['explanation']}")
        if seen == set(sent):
            break
    return seen
