"""Crisis incidents as the decide stage sees them: the latest Incident per id, from the
compacted `mod.incidents` topic (followed live), and whether any is active."""

from __future__ import annotations

import threading

from pipeline.records import Record


class IncidentTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._incidents: dict[str, Record] = {}

    def apply(self, key: str, incident: Record | None) -> None:
        with self._lock:
            if incident is None:
                self._incidents.pop(key, None)
            else:
                self._incidents[key] = incident

    def active(self) -> bool:
        with self._lock:
            return any(i["status"] == "active" for i in self._incidents.values())

    def active_incidents(self) -> list[Record]:
        """The active incidents, newest first."""
        with self._lock:
            active = [i for i in self._incidents.values() if i["status"] == "active"]
        return sorted(active, key=lambda i: -i["declared_at"])

    def all(self) -> list[Record]:
        with self._lock:
            return sorted(self._incidents.values(), key=lambda i: -i["declared_at"])
