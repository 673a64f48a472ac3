"""The policy engine: a versioned YAML file of rules, evaluated first-match-wins.

    policy_id: default
    version: "4"
    rules:                       # tried by priority (higher first), then file order
      - id: bank-match-severe
        when: {bank_match: {severity: [critical, high]}}
        action: remove
        effects: [bank, share, strike]
    default: {id: default-allow, action: allow}

A rule fires when every condition in `when` holds. Conditions:
- kind: [upload, report, live];  live_event: [started, frame, ended]
- bank_match: {category, severity, bank, signal_type: lists; max_distance: n; not_bank: list;
  overridden_by: list} (a bank name ending in `*` is a prefix: `partner-review.*` names every
  review-trust partner bank; `not_bank` leaves those banks' matches out; `overridden_by`
  leaves out perceptual matches (pdq, video_pdq) when the record also matches one of those
  banks, e.g. a benign bank of news footage, while exact matches still count)
- score: {label, model (optional), at_least: a number, or `review` / `remove` for the
  model registry's threshold of that label}
- reports: {distinct_reporters_at_least: n, trust_at_least: x, reason: [..]}
- account: {identity_verified: bool, strikes_at_least: n, live_suspended: bool}
- media_error: true;  incident_active: true (any incident is active)
- incident_category: true: an active incident's category is the category of one of the
  record's bank matches or its report reasons (the record belongs to the crisis)
Actions: allow, remove, review, restrict, end_stream, pending (a report waiting for more
reports or its deadline). Effects: bank (hashes to the removed bank), share (hash signals
to partners), strike (the account enforcer adds a strike), suspend_live (and suspends
live access). A rule may set review_priority for the review task it creates.

An invalid file raises PolicyError naming the rule and the problem.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from pipeline.records import Record

ACTIONS = ("allow", "remove", "review", "restrict", "end_stream", "pending")
UPHELD = frozenset({"remove", "restrict", "end_stream"})  # actions against the content
FINAL = UPHELD | {"allow"}  # actions that close a reported item; review and pending do not
EFFECTS = ("bank", "share", "strike", "suspend_live")
PERCEPTUAL = frozenset({"pdq", "pdq_dihedral", "video_pdq"})
CONDITIONS = (
    "kind",
    "live_event",
    "bank_match",
    "score",
    "reports",
    "account",
    "media_error",
    "incident_active",
    "incident_category",
)
DEFAULT_POLICY = Path(__file__).parent / "default.yaml"


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    id: str
    action: str
    when: Mapping[str, Any] = field(default_factory=dict)
    effects: tuple[str, ...] = ()
    priority: int = 0
    review_priority: int = 1


class _lazy:
    """A per-instance cached attribute, like functools.cached_property without its lock
    (Python 3.11 takes a lock on every first read; a Facts is built per record and read on
    one thread)."""

    def __init__(self, compute: Callable[[Any], Any]) -> None:
        self.compute = compute
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


@dataclass
class Facts:
    """What a rule can look at for one record."""

    record: Record
    reports: Mapping[str, Any] | None = None  # distinct_reporters, trust, reasons
    incident_active: bool = False
    incidents: tuple[Record, ...] = ()  # the active incidents, newest first

    @_lazy
    def present(self) -> frozenset[str]:
        """What the record has of what conditions look at (see `_needs`)."""
        r = self.record
        there = (
            ("matches", r["matches"]),
            ("scores", r["scores"]),
            ("reports", self.reports),
            ("account", r.get("account")),
            ("media_error", r.get("media_error")),
            ("incident_active", self.incident_active),
            ("incidents", self.incidents),
        )
        return frozenset(name for name, value in there if value)

    @_lazy
    def categories(self) -> set[str]:
        """What the record is about, by its evidence: its matches' categories, report reasons."""
        found = {m["category"] for m in self.record["matches"]}
        return found | set((self.reports or {}).get("reasons") or ())

    # Sorted once per record, however many rules look at them.
    @_lazy
    def matches_nearest_first(self) -> list[Record]:
        return sorted(self.record["matches"], key=lambda m: m["distance"])

    @_lazy
    def scores_highest_first(self) -> list[Record]:
        return sorted(self.record["scores"], key=lambda s: -s["score"])


@dataclass(frozen=True)
class Outcome:
    rule: Rule
    explanation: str
    category: str | None
    severity: str | None
    thresholds: dict[str, float]
    incident_id: str | None = None  # the incident the decision is taken under


def incident_of(rule: Rule, facts: Facts) -> str | None:
    """The incident a decision names: the incident a matched entry was banked for; else, when
    the rule fired because of an incident, the active incident of the record's category (or the
    newest active one)."""
    for m in facts.matches_nearest_first:
        if m.get("incident_id"):
            return str(m["incident_id"])
    if not facts.incidents or not {"incident_active", "incident_category"} & set(rule.when):
        return None
    mine = [i for i in facts.incidents if i["category"] in facts.categories]
    return str((mine or list(facts.incidents))[0]["incident_id"])


@dataclass(frozen=True)
class Policy:
    policy_id: str
    version: str
    rules: tuple[Rule, ...]
    default: Rule
    registry_thresholds: Mapping[tuple[str, str], Any] = field(default_factory=dict)  # (model, label) -> Threshold

    @cached_property
    def _rules_by_kind(self) -> dict[str, tuple[Rule, ...]]:
        """The rules that can fire for each kind of record, in order: a rule whose `kind`
        condition excludes a kind is never tried on it."""
        return {
            kind: tuple(r for r in self.rules if kind in r.when.get("kind", (kind,)))
            for kind in ("upload", "report", "live")
        }

    @cached_property
    def _candidates(self) -> dict[tuple[str, frozenset[str]], tuple[Rule, ...]]:
        """(kind, what a record has) -> the rules that can fire on such a record, in order;
        filled as records come (a few dozen combinations at most)."""
        return {}

    def evaluate(self, facts: Facts) -> Outcome:
        kind = facts.record["kind"]
        key = (kind, facts.present)
        rules = self._candidates.get(key)
        if rules is None:
            rules = tuple(r for r in self._rules_by_kind.get(kind, self.rules) if _needs(r) <= facts.present)
            self._candidates[key] = rules
        for rule in rules:
            fired = _fires(rule, facts, self.registry_thresholds)
            if fired is not None:
                return _outcome(rule, fired, incident_of(rule, facts))
        return _outcome(self.default, [], incident_of(self.default, facts))


# ---- loading and validation ---------------------------------------------------------
def load_policy(
    path: Path = DEFAULT_POLICY, registry_thresholds: Mapping[tuple[str, str], Any] | None = None
) -> Policy:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"cannot read policy {path}: {exc}") from exc
    return parse_policy(doc, str(path), registry_thresholds or {})


def parse_policy(
    doc: Any, where: str = "policy", registry_thresholds: Mapping[tuple[str, str], Any] | None = None
) -> Policy:
    if not isinstance(doc, dict):
        raise PolicyError(f"{where}: expected a mapping")
    unknown = set(doc) - {"policy_id", "version", "rules", "default"}
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("policy_id", "version", "rules", "default"):
        if key not in doc:
            raise PolicyError(f"{where}: missing {key!r}")
    if not isinstance(doc["rules"], list):
        raise PolicyError(f"{where}: rules must be a list")
    rules = [_rule(r, f"{where}: rule {i + 1}") for i, r in enumerate(doc["rules"])]
    default = _rule(
        {"id": "default", **doc["default"]} if isinstance(doc["default"], dict) else doc["default"], f"{where}: default"
    )
    if default.when:
        raise PolicyError(f"{where}: the default rule takes no conditions")
    ids = [r.id for r in rules] + [default.id]
    if len(set(ids)) != len(ids):
        raise PolicyError(f"{where}: rule ids must be unique: {ids}")
    ordered = sorted(rules, key=lambda r: -r.priority)  # stable: file order among equals
    return Policy(str(doc["policy_id"]), str(doc["version"]), tuple(ordered), default, dict(registry_thresholds or {}))


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a mapping")
    unknown = set(raw) - {"id", "when", "action", "effects", "priority", "review_priority"}
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    if "id" not in raw or "action" not in raw:
        raise PolicyError(f"{where}: needs an id and an action")
    where = f"{where} ({raw['id']})"
    if raw["action"] not in ACTIONS:
        raise PolicyError(f"{where}: action {raw['action']!r} is not one of {ACTIONS}")
    effects = tuple(raw.get("effects") or ())
    if set(effects) - set(EFFECTS):
        raise PolicyError(f"{where}: unknown effects {sorted(set(effects) - set(EFFECTS))}; known: {EFFECTS}")
    when = raw.get("when") or {}
    if not isinstance(when, dict):
        raise PolicyError(f"{where}: when must be a mapping")
    if set(when) - set(CONDITIONS):
        raise PolicyError(f"{where}: unknown conditions {sorted(set(when) - set(CONDITIONS))}; known: {CONDITIONS}")
    _check_conditions(when, where)
    return Rule(
        str(raw["id"]), raw["action"], when, effects, int(raw.get("priority", 0)), int(raw.get("review_priority", 1))
    )


_SHAPES: dict[str, set[str]] = {
    "bank_match": {"category", "severity", "bank", "signal_type", "max_distance", "not_bank", "overridden_by"},
    "score": {"label", "model", "at_least"},
    "reports": {"distinct_reporters_at_least", "trust_at_least", "reason"},
    "account": {"identity_verified", "strikes_at_least", "live_suspended"},
}


def _check_conditions(when: Mapping[str, Any], where: str) -> None:
    for name, shape in _SHAPES.items():
        if name in when:
            value = when[name]
            if not isinstance(value, dict) or set(value) - shape:
                raise PolicyError(f"{where}: {name} takes a mapping of {sorted(shape)}")
    score = when.get("score")
    if score is not None:
        if "label" not in score or "at_least" not in score:
            raise PolicyError(f"{where}: score needs a label and at_least")
        if not isinstance(score["at_least"], int | float) and score["at_least"] not in ("review", "remove"):
            raise PolicyError(f"{where}: score.at_least must be a number, review or remove")
    for name in ("kind", "live_event"):
        if name in when and not isinstance(when[name], list):
            raise PolicyError(f"{where}: {name} takes a list")


# ---- evaluation ------------------------------------------------------------------------
Evidence = list[tuple[str, Any]]  # (condition, what satisfied it)


def _fires(rule: Rule, facts: Facts, registry: Mapping[tuple[str, str], Any]) -> Evidence | None:
    evidence = []
    for name, cond in rule.when.items():
        found = _CHECKS[name](cond, facts, registry)
        if found is None or found is False:
            return None
        evidence.append((name, found))
    return evidence


# Conditions that fail on a record without this (in `Facts.present`'s terms), whatever they ask.
_NEEDS = {"bank_match": "matches", "score": "scores", "reports": "reports", "account": "account"}


def _needs(rule: Rule) -> frozenset[str]:
    """What a record must have (in `Facts.present`'s terms) for `rule` to fire: each of these
    conditions fails on a record without it, so the rule is not even tried on one."""
    found = {_NEEDS[name] for name in rule.when if name in _NEEDS}
    if rule.when.get("media_error") is True:
        found.add("media_error")
    if rule.when.get("incident_active") is True:
        found.add("incident_active")
    if rule.when.get("incident_category") is True:
        found.add("incidents")
    return frozenset(found)


def _kind(cond: list[str], facts: Facts, _: Any) -> Any:
    return facts.record["kind"] if facts.record["kind"] in cond else None


def _live_event(cond: list[str], facts: Facts, _: Any) -> Any:
    live = facts.record.get("live")
    return live["kind"] if live and live["kind"] in cond else None


def _bank_match(cond: Mapping[str, Any], facts: Facts, _: Any) -> Any:
    overriding = cond.get("overridden_by", ())
    overridden = bool(overriding) and any(_named(m["bank"], overriding) for m in facts.matches_nearest_first)
    for m in facts.matches_nearest_first:
        if overridden and m["signal_type"] in PERCEPTUAL:
            continue
        if (
            all(m[k] in cond[k] for k in ("category", "severity", "signal_type") if k in cond)
            and ("bank" not in cond or _named(m["bank"], cond["bank"]))
            and not _named(m["bank"], cond.get("not_bank", ()))
            and m["distance"] <= cond.get("max_distance", 256)
        ):
            return m
    return None


def _named(bank: str, patterns: Sequence[str]) -> bool:
    """Whether `bank` is one of `patterns`; a pattern ending in `*` is a prefix."""
    return any(bank.startswith(p[:-1]) if p.endswith("*") else bank == p for p in patterns)


def _score(cond: Mapping[str, Any], facts: Facts, registry: Mapping[tuple[str, str], Any]) -> Any:
    for s in facts.scores_highest_first:
        if s["label"] != cond["label"] or ("model" in cond and s["model"] != cond["model"]):
            continue
        limit = cond["at_least"]
        if isinstance(limit, str):  # the registry's review or remove threshold for this label
            limit = getattr(registry.get((s["model"], s["label"])), limit, None)
            if limit is None:
                continue
        if s["score"] >= limit:
            return (s, float(limit))
    return None


def _reports(cond: Mapping[str, Any], facts: Facts, _: Any) -> Any:
    agg = facts.reports
    if not agg:
        return None
    ok = (
        agg["distinct_reporters"] >= cond.get("distinct_reporters_at_least", 0)
        and agg["trust"] >= cond.get("trust_at_least", 0.0)
        and ("reason" not in cond or any(r in cond["reason"] for r in agg["reasons"]))
    )
    return agg if ok else None


def _account(cond: Mapping[str, Any], facts: Facts, _: Any) -> Any:
    account = facts.record.get("account")
    if not account:
        return None
    ok = all(account[k] == cond[k] for k in ("identity_verified", "live_suspended") if k in cond) and account[
        "strikes"
    ] >= cond.get("strikes_at_least", 0)
    return account if ok else None


def _media_error(cond: bool, facts: Facts, _: Any) -> Any:
    return facts.record["media_error"] if bool(facts.record["media_error"]) == bool(cond) else None


def _incident(cond: bool, facts: Facts, _: Any) -> Any:
    return True if facts.incident_active == bool(cond) else None


def _incident_category(cond: bool, facts: Facts, _: Any) -> Any:
    mine = sorted({i["category"] for i in facts.incidents} & facts.categories)
    if cond:
        return mine[0] if mine else None
    return None if mine else True


_CHECKS: dict[str, Callable[[Any, Facts, Mapping[tuple[str, str], Any]], Any]] = {
    "kind": _kind,
    "live_event": _live_event,
    "bank_match": _bank_match,
    "score": _score,
    "reports": _reports,
    "account": _account,
    "media_error": _media_error,
    "incident_active": _incident,
    "incident_category": _incident_category,
}


def _outcome(rule: Rule, evidence: Evidence, incident_id: str | None = None) -> Outcome:
    parts, category, severity, thresholds = [], None, None, {}
    for name, found in evidence:
        if name == "bank_match":
            parts.append(
                f"{found['signal_type']} match in bank {found['bank']!r} at distance {found['distance']} "
                f"({found['category']}, {found['severity']})"
            )
            category, severity = found["category"], found["severity"]
        elif name == "score":
            s, limit = found
            parts.append(f"{s['model']} scored {s['label']} {s['score']:.2f} >= {limit}")
            thresholds[f"{s['model']}/{s['label']}"] = limit
            category = category or s["label"]
        elif name == "reports":
            parts.append(
                f"{found['distinct_reporters']} distinct reporter(s), trust {found['trust']:.2f}, "
                f"reasons {', '.join(sorted(found['reasons']))}"
            )
            category = category or (
                sorted(found["reasons"], key=lambda r: -found["reasons"][r])[0] if found["reasons"] else None
            )
        elif name == "account":
            parts.append(
                f"account verified={found['identity_verified']} strikes={found['strikes']} "
                f"live_suspended={found['live_suspended']}"
            )
        elif name == "media_error":
            parts.append(f"media could not be checked ({found})")
        elif name == "incident_category" and found is not True:
            parts.append(f"during an active incident about {found}")
        else:
            parts.append(f"{name}={found}")
    because = "; ".join(parts) if parts else "no other rule applied"
    if incident_id:
        because += f" (incident {incident_id})"
    return Outcome(rule, f"{rule.action} by rule {rule.id}: {because}", category, severity, thresholds, incident_id)
