"""The logging enforcer: acts on nothing, logs every decision. The reference for writing one."""

from __future__ import annotations

import logging

from pipeline.enforce.consumer import ACTIONS, Handler
from pipeline.records import Record

logger = logging.getLogger(__name__)


def log_decision(d: Record) -> str:
    env = d["envelope"]
    subject = env.get("content_id") or env.get("stream_id") or env["event_id"]
    logger.info(
        "%s %s %s (rule %s, policy %s v%s): %s",
        d["action"].upper(),
        d["kind"],
        subject,
        d["rule_id"],
        d["policy_id"],
        d["policy_version"],
        d["explanation"],
    )
    return f"logged {d['action']} of {subject}"


def handlers() -> dict[str, Handler]:
    return {action: log_decision for action in ACTIONS}
