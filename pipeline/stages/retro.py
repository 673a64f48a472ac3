"""retro: retroactive matching. When a bank gains an entry (a local removal into the
`removed` bank, an import, a partner's signal, an incident's seed), the entry is matched
against the uploads of the last days (pipeline.state.recent), and every upload it finds that
nothing has acted on yet is removed: content allowed yesterday is taken down today.

The stage reads `banks` and `decisions`. For a batch:
1. Decisions: upheld ones mark their item actioned (the store's follower notes them too);
   the uploads decided otherwise are kept for a minute or two in small stores of their own
   (`_fresh`), which bridge the follower's lag, and are checked against the entries of the last
   `RECHECK_MS` (step 4): an upload the match stage checked just before an entry reached the
   bank table, but decided only after retro had searched for the entry, is found that way.
2. Entries: md5 and sha256 match exactly, pdq within the bank's threshold; video_pdq is not
   kept for recent uploads. Entries older than the window are skipped: every upload kept came
   after them and was matched against them at upload time. Tombstones (deletions) are skipped,
   and hashes that are not hashes dead-lettered.
3. The store and `_fresh` are searched for the uploads near the batch's hashes.
4. The uploads of step 1 are matched against the entries of the last `RECHECK_MS` (at most
   `RECHECK_MAX`), as the match stage would (dihedral variants too).
5. The policy decides whether such a match removes: it is evaluated on the upload as if it had
   matched the entry (with the matches of its earlier decision, so a benign-bank match still
   overrides), and only an upheld outcome counts. Partners trusted for review only, for
   instance, send no one's upload to removal after the fact.
6. One entry per upload: the entry that already owns it (a redelivery), else the nearest
   (ties by key). Owners are claimed in the store once the whole batch is done; an upload
   with an upheld decision, or owned by another entry, is left alone.
7. A Decision per upload: action remove, rule `retroactive-match`, effects `strike` at most
   (the hashes are banked already), the entry in `matches`, its incident, and an explanation
   naming the entry's bank, hash, category and distance. Its decision_id (also its event id)
   derives from the upload and the entry, so a redelivered entry repeats the decision.

Two waits, through `not_before` (the runner holds the entry's partition, not its loop): no
entry is matched before the store has read `decisions` to its end, and an entry banked by a
local decision (`source` "<platform>:decision:<id>") waits, up to `DECISION_WAIT_MS`, until
that decision has been seen, so the removed item is not decided a second time.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from pipeline.banks.table import BankTable, MatchConfig, bank_match
from pipeline.policy.engine import UPHELD, Facts, Outcome, Policy
from pipeline.records import Incoming, Output, Record, dead_letter, now_ms, record_key, stable_id, subject_key
from pipeline.serde import Codec
from pipeline.stages.decide import decision
from pipeline.state.recent import RETRO_RULE, Hit, RecentItem, RecentStore

logger = logging.getLogger(__name__)

SIGNAL_TYPES = frozenset({"md5", "sha256", "pdq"})
HEX_LENGTHS = {"md5": 32, "sha256": 64, "pdq": 64}
NOT_READY_RETRY_MS = 500  # how long an entry is held while the store is still loading
DECISION_WAIT_MS = 30_000  # longest wait for the local decision behind a `removed` entry
DECISION_POLL_MS = 100
FRESH_MS = 60_000  # uploads decided here are kept beside the store for 1 to 2 times this (its follower's lag)
RECHECK_MS = 15 * 60_000  # how long entries are kept to check uploads decided after them
RECHECK_MAX = 100_000  # entries kept for that, at most

Candidate = tuple[str, Hit, Outcome]  # entry key, the upload it reaches, what the policy makes of it


class RetroStage:
    name = "retro"
    inputs = ("banks", "decisions")
    outputs = ("decisions",)

    def __init__(
        self,
        store: RecentStore,
        policy: Policy,
        config: MatchConfig | None = None,
        *,
        ready: Callable[[], bool] = lambda: True,
        incidents: Callable[[], list[Record]] = list,
        topic_prefix: str = "mod.",
        clock: Callable[[], int] = now_ms,
    ) -> None:
        """`ready` says whether the store has caught up with `decisions`; `incidents` gives
        the active incidents (newest first) for the policy."""
        self.store = store
        self.policy = policy
        self.config = config or MatchConfig(min_quality=store.min_quality)
        self.ready = ready
        self.incidents = incidents
        self.topic_prefix = topic_prefix
        self.clock = clock
        # Uploads decided here lately, in two generations of FRESH_MS: the newer is filled.
        self._fresh = [self._new_fresh(), self._new_fresh()]
        self._fresh_since = clock()
        # The entries of the last RECHECK_MS, to match uploads decided after them.
        self.recent_entries = BankTable(self.config)
        self._entries: dict[str, tuple[int, Record]] = {}  # key -> (when searched, entry)
        self._searched: deque[tuple[int, str]] = deque()  # (when, key), oldest first

    def not_before(self, record: Incoming) -> int | None:
        if record.topic != "banks":
            return None
        now = self.clock()
        if not self.ready():
            return now + NOT_READY_RETRY_MS
        entry = record.value
        _, sep, decision_id = str(entry.get("source") or "").partition(":decision:")
        if sep and now < int(entry.get("added_at") or 0) + DECISION_WAIT_MS and not self.store.decided(decision_id):
            return now + DECISION_POLL_MS
        return None

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        now = self.clock()
        oldest = now - self.store.window_ms
        out: list[Output] = []
        # 1. Decisions.
        uploads: list[Record] = []
        for incoming in batch:
            if incoming.topic == "decisions":
                d = incoming.value
                self.store.note_decision(d)
                if d["action"] in UPHELD or d["kind"] != "upload" or not d["signals"]:
                    continue
                content_id = d["envelope"].get("content_id")
                if content_id and self.store.owns(content_id) and d["envelope"]["occurred_at"] >= oldest:
                    uploads.append(d)
                    if d["decided_at"] >= now - FRESH_MS:  # not the history a new group reads first
                        self._fresh[0].add(d)
        # 2. Entries.
        entries: dict[str, Record] = {}  # key -> entry; the latest of a key in the batch wins
        for incoming in batch:
            entry = incoming.value
            if incoming.topic != "banks" or not entry or entry["signal_type"] not in SIGNAL_TYPES:
                continue  # a tombstone, or a kind of hash recent uploads do not keep
            problem = _invalid(entry)
            if problem:
                out.append(dead_letter(incoming, self.name, "invalid", problem, self.topic_prefix))
                continue
            if entry["added_at"] >= oldest:
                entry = {**entry, "hash": entry["hash"].lower()}
                entries[record_key("banks", entry)] = entry
        incidents = tuple(self.incidents())
        candidates: dict[str, list[Candidate]] = {}

        def consider(key: str, entry: Record, hit: Hit) -> None:  # 5. what the policy makes of a match
            if entry.get("item_id") == hit.item.content_id:
                return  # the entry was banked from this very upload
            outcome = self._outcome(hit, entry, incidents)
            if outcome.rule.action in UPHELD:
                candidates.setdefault(hit.item.content_id, []).append((key, hit, outcome))

        # 3. The uploads near the new entries.
        if entries:
            keys = list(entries)
            radius = max(self.config.threshold(e["bank"]) for e in entries.values())
            queries = [(entries[k]["signal_type"], entries[k]["hash"]) for k in keys]
            hits = [h for store in (self.store, *self._fresh) for h in store.search(queries, radius, now)]
            for hit in hits:
                entry = entries[keys[hit.query]]
                if entry["signal_type"] != "pdq" or hit.distance <= self.config.threshold(entry["bank"]):
                    consider(keys[hit.query], entry, hit)
        # 4. The uploads decided since earlier entries.
        if uploads and self._entries:
            for d, matches in zip(
                uploads, self.recent_entries.match_batch([d["signals"] for d in uploads]), strict=True
            ):
                for m in matches:
                    key = record_key("banks", m)
                    if key in self._entries:
                        consider(key, self._entries[key][1], _hit(d, m))
        # 6. One entry per upload, claimed; 7. its decision.
        chosen = {cid: self._choose(cid, found) for cid, found in sorted(candidates.items())}
        granted = self.store.claim([(cid, key) for cid, (key, _, _) in chosen.items()])
        for (key, hit, outcome), ok in zip(chosen.values(), granted, strict=True):
            if ok:
                entry = entries[key] if key in entries else self._entries[key][1]
                out.append(self._decision(key, entry, hit, outcome))
        self._remember(entries, now)
        if now - self._fresh_since >= FRESH_MS:
            self._fresh = [self._new_fresh(), self._fresh[0]]
            self._fresh_since = now
        return out

    def _new_fresh(self) -> RecentStore:
        s = self.store
        return RecentStore(s.window_ms, s.min_quality, "pdq_dihedral" in s.pdq_types, s.shard, self.clock)

    def _remember(self, entries: dict[str, Record], now: int) -> None:
        """Keeps the batch's entries for uploads decided later; forgets the oldest."""
        for key, entry in entries.items():
            self._entries[key] = (now, entry)
            self._searched.append((now, key))
            self.recent_entries.apply(key, entry)
        while self._searched and (self._searched[0][0] < now - RECHECK_MS or len(self._entries) > RECHECK_MAX):
            at, key = self._searched.popleft()
            if key in self._entries and self._entries[key][0] == at:
                del self._entries[key]
                self.recent_entries.apply(key, None)

    def _outcome(self, hit: Hit, entry: Record, incidents: tuple[Record, ...]) -> Outcome:
        """What the policy makes of the upload with this match (and its earlier ones)."""
        record = self._record(hit, [*self.store.prior_matches(hit.item.content_id), bank_match(entry, hit.distance)])
        return self.policy.evaluate(Facts(record, None, bool(incidents), incidents))

    def _choose(self, content_id: str, found: list[Candidate]) -> Candidate:
        owner = self.store.owner(content_id)
        for candidate in found:
            if candidate[0] == owner:
                return candidate
        return min(found, key=lambda c: (c[1].distance, c[0]))

    def _record(self, hit: Hit, matches: list[Record]) -> Record:
        item = hit.item
        env = {
            "event_id": "",
            "platform_id": item.platform_id,
            "occurred_at": item.occurred_at,
            "content_id": item.content_id,
            "stream_id": None,
            "user_id": item.user_id,
        }
        return {
            "envelope": env,
            "kind": "upload",
            "upload": None,
            "report": None,
            "live": None,
            "account": None,
            "signals": [hit.signal],
            "media_error": None,
            "matches": matches,
            "scores": [],
            "stages": [],
        }

    def _decision(self, key: str, entry: Record, hit: Hit, outcome: Outcome) -> Output:
        match = bank_match(entry, hit.distance)
        record = self._record(hit, [match])
        decision_id = stable_id(RETRO_RULE, hit.item.content_id, key)
        record["envelope"]["event_id"] = decision_id
        threshold = self.config.threshold(entry["bank"])
        uploaded = datetime.fromtimestamp(hit.item.occurred_at / 1000, UTC).isoformat(timespec="seconds")
        how = f"at distance {hit.distance} (threshold {threshold})" if entry["signal_type"] == "pdq" else "exactly"
        explanation = (
            f"remove by rule {RETRO_RULE}: uploaded {uploaded}, it matches {how} the {entry['signal_type']} "
            f"{entry['hash']} that bank {entry['bank']!r} gained afterwards ({entry['category']}, "
            f"{entry['severity']}, from {entry.get('source') or 'unknown'}); the policy's rule "
            f"{outcome.rule.id} removes on such a match"
        )
        incident_id = entry.get("incident_id") or outcome.incident_id
        if incident_id:
            explanation += f" (incident {incident_id})"
        d = decision(
            record,
            self.policy,
            "remove",
            RETRO_RULE,
            explanation,
            category=entry["category"],
            severity=entry["severity"],
            thresholds={"pdq_distance": float(threshold)} if entry["signal_type"] == "pdq" else {},
            effects=["strike"] if "strike" in outcome.rule.effects else [],
            incident_id=incident_id,
        )
        d["decision_id"] = decision_id
        return Output("decisions", subject_key(d["envelope"]), d)


def _hit(d: Record, match: Record) -> Hit:
    """A decided upload that a kept entry matches, as a search would have found it."""
    env = d["envelope"]
    item = RecentItem(env["content_id"], env.get("user_id"), env["platform_id"], env["occurred_at"])
    if match["signal_type"] == "pdq":  # the variant nearest the entry (a mirrored copy: a dihedral one)
        banked = int(match["hash"], 16)
        pdq = [s for s in d["signals"] if s["signal_type"] in ("pdq", "pdq_dihedral")]
        signal = min(pdq, key=lambda s: (int(s["value"], 16) ^ banked).bit_count())
    else:
        signal = next(s for s in d["signals"] if s["signal_type"] == match["signal_type"])
    return Hit(-1, item, match["distance"], signal)


def _invalid(entry: Record) -> str | None:
    """Why a bank entry's hash cannot be matched, if it cannot."""
    value, kind = entry["hash"], entry["signal_type"]
    if len(value) != HEX_LENGTHS[kind]:
        return f"a {kind} hash has {HEX_LENGTHS[kind]} hex digits, not {len(value)}"
    try:
        bytes.fromhex(value)
    except ValueError:
        return f"the {kind} hash is not hexadecimal: {value!r}"
    return None


class BankCodec(Codec):
    """The codec of retro's runner. `banks` is compacted: a record without a value deletes
    an entry, which the runner would dead-letter as undecodable; retro has nothing to undo
    (a decision taken stays), so a deletion is handed over as an empty record and skipped."""

    def decode(self, record_type: str, raw: bytes | None) -> Record:
        if raw is None and record_type == "BankEntry":
            return {}
        return super().decode(record_type, raw)
