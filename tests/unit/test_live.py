"""The live stage with an in-memory stream store and a real bank table: a re-broadcast of a
banked video is ended once, benign streams run, accounts gate `started`, frames after the end
are not judged, and a redelivery re-emits the same decision."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.banks.table import BankTable
from pipeline.policy.engine import DEFAULT_POLICY, load_policy
from pipeline.records import Incoming, Output, Record, envelope, record_key
from pipeline.signals.media import MediaLimits, media_signals
from pipeline.stages.live import LiveStage
from pipeline.state.accounts import account_context
from pipeline.state.streams import StreamState
from tests.media import encode, frames_of, photo, reencode_video, video

VERIFIED = {"identity_verified": "1"}


class MemoryStreams:
    """The StreamStore contract in memory (the Redis one is tested through the broker)."""

    def __init__(self) -> None:
        self.meta: dict[str, dict[str, Any]] = {}
        self.frames: dict[str, dict[int, str]] = {}
        self.hits: dict[str, dict[int, list[list[Any]]]] = {}

    def load(self, stream_ids: list[str]) -> dict[str, StreamState]:
        out = {}
        for sid in stream_ids:
            m = self.meta.get(sid, {})
            out[sid] = StreamState(
                sid,
                m.get("status", ""),
                m.get("user_id"),
                m.get("last_pdq"),
                m.get("end_by"),
                m.get("review_by"),
                len(self.frames.get(sid, {})),
                dict(self.hits.get(sid, {})),
                json.loads(m["end"]) if "end" in m else None,
                json.loads(m["review"]) if "review" in m else None,
            )
        return out

    def save(self, states: list[StreamState], frames: dict[str, dict[int, str]], started_at: dict[str, int]) -> None:
        for st in states:
            m = self.meta.setdefault(st.stream_id, {})
            if st.status == "live" and m.get("status") not in ("ended", "closed"):
                m["status"] = "live"
            m.update({k: v for k, v in (("user_id", st.user_id), ("last_pdq", st.last_pdq)) if v})
            self.frames.setdefault(st.stream_id, {}).update(frames.get(st.stream_id, {}))
            self.hits.setdefault(st.stream_id, {}).update({k: v for k, v in st.hits.items() if v})

    def claim(self, stream_id: str, what: str, event_id: str, record: Record, status: str = "") -> tuple[str, Record]:
        m = self.meta.setdefault(stream_id, {})
        if f"{what}_by" not in m:
            m[f"{what}_by"], m[what] = event_id, json.dumps(record)
            if status:
                m["status"] = status
        return m[f"{what}_by"], json.loads(m[what])

    def close(self, stream_id: str, closed_at: int) -> None:
        m = self.meta.setdefault(stream_id, {})
        if m.get("status") != "ended":
            m["status"] = "closed"


class Accounts:
    def __init__(self, fields: dict[str, dict[str, str]]) -> None:
        self.fields = fields

    def get_many(self, user_ids: Any) -> dict[str, Record]:
        return {u: account_context(u, self.fields.get(u, {})) for u in user_ids}


@pytest.fixture(scope="module")
def banked() -> tuple[BankTable, bytes]:
    """A table with one banked video (its per-frame hashes) and the video itself."""
    clip = video(7, seconds=12, scene_seconds=2)
    table = BankTable()
    for s in media_signals(clip, MediaLimits()):
        if s["signal_type"] == "video_pdq":
            entry = {
                "bank": "tvec",
                "signal_type": "video_pdq",
                "hash": s["value"],
                "category": "terrorism",
                "severity": "critical",
                "source": "test",
                "added_at": 0,
                "item_id": "attack-video",
            }
            table.apply(record_key("banks", entry), entry)
    return table, clip


def live(
    sid: str, user: str, kind: str, index: int | None = None, frame: bytes | None = None, eid: str = ""
) -> Incoming:
    event = {
        "envelope": envelope("p", stream_id=sid, user_id=user, event_id=eid or None),
        "kind": kind,
        "frame_index": index,
        "frame_b64": frame,
        "text": "my stream" if kind == "started" else None,
    }
    return Incoming("live", sid.encode(), event, 0, 0)


def stage(table: BankTable, streams: MemoryStreams, accounts: dict[str, dict[str, str]]) -> LiveStage:
    return LiveStage(streams, Accounts(accounts), table, load_policy(DEFAULT_POLICY))


def decisions(out: list[Output]) -> list[Record]:
    return [o.value for o in out if o.topic == "decisions" and o.value]


def test_a_rebroadcast_of_a_banked_video_is_ended_once(banked: tuple[BankTable, bytes]) -> None:
    table, clip = banked
    copy = frames_of(reencode_video(clip, (480, 360)))  # re-encoded and rescaled
    benign = [encode(photo(900 + i, (640, 360)), quality=80) for i in range(4)]
    streams = MemoryStreams()
    s = stage(table, streams, {"u": VERIFIED})
    out = s.process([live("s1", "u", "started")])
    assert [d["action"] for d in decisions(out)] == ["allow"]
    frames = benign + copy
    ended: list[Record] = []
    for i, f in enumerate(frames):  # one frame a second, one batch each
        ended += [d for d in decisions(s.process([live("s1", "u", "frame", i, f, eid=f"f{i}")])) if d]
    [d] = ended
    assert d["action"] == "end_stream" and d["rule_id"] == "bank-match-live"
    assert any(m["signal_type"] == "video_pdq" and m["item_id"] == "attack-video" for m in d["matches"])
    assert "frames" in next(m["source"] for m in d["matches"] if m["signal_type"] == "video_pdq")
    assert "strike" in d["effects"] and "ended at frame" in d["explanation"]
    ended_at = int(d["explanation"].split("ended at frame ")[1].split(":")[0])
    assert len(benign) <= ended_at <= len(benign) + 8  # within a few seconds of the copy starting

    owner = streams.meta["s1"]["end_by"]
    again = s.process([live("s1", "u", "frame", ended_at, frames[ended_at], eid=owner)])  # the redelivery
    assert decisions(again) == [d]
    later = s.process([live("s1", "u", "frame", 99, frames[-1], eid="late")])
    assert decisions(later) == []  # frames after the end are not judged


def test_benign_footage_is_never_ended(banked: tuple[BankTable, bytes]) -> None:
    table, _ = banked
    other = frames_of(video(31, seconds=12, scene_seconds=2))
    s = stage(table, MemoryStreams(), {"u": VERIFIED})
    out = s.process([live("s2", "u", "started")])
    for i, f in enumerate(other):
        out += s.process([live("s2", "u", "frame", i, f)])
    assert [d["action"] for d in decisions(out)] == ["allow"]


def test_unverified_and_suspended_accounts_may_not_go_live(banked: tuple[BankTable, bytes]) -> None:
    table, _ = banked
    accounts: dict[str, dict[str, str]] = {"anon": {}, "banned": {**VERIFIED, "live_suspended": "1"}}
    s = stage(table, MemoryStreams(), accounts)
    [refused] = decisions(s.process([live("s3", "anon", "started")]))
    assert (refused["action"], refused["rule_id"]) == ("end_stream", "live-unverified")
    [suspended] = decisions(s.process([live("s4", "banned", "started")]))
    assert (suspended["action"], suspended["rule_id"]) == ("end_stream", "live-suspended")
    accounts["anon"] = VERIFIED  # the platform verified the account: its next stream runs
    [ok] = decisions(s.process([live("s5", "anon", "started")]))
    assert ok["action"] == "allow"


def test_many_violating_frames_in_one_batch_make_one_decision(banked: tuple[BankTable, bytes]) -> None:
    table, clip = banked
    frames = frames_of(clip)
    s = stage(table, MemoryStreams(), {"u": VERIFIED})
    batch = [live("s6", "u", "started")] + [live("s6", "u", "frame", i, f) for i, f in enumerate(frames)]
    ends = [d for d in decisions(s.process(batch)) if d["action"] == "end_stream"]
    assert len(ends) == 1
