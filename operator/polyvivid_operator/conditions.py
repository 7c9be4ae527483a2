"""Status conditions in the Kubernetes convention (type, status, reason, message,
lastTransitionTime, observedGeneration): the transition time moves only when the status does."""

from __future__ import annotations

from datetime import datetime, timezone


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict], type_: str, status: bool, reason: str, message: str,
                  generation: int | None) -> list[dict]:
    """A new list with the condition `type_` set; the others kept as they are."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type_), None)
    unchanged = old and old.get("status") == value and old.get("lastTransitionTime")
    changed_at = old["lastTransitionTime"] if unchanged else now()
    new = {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": changed_at}
    if generation is not None:
        new["observedGeneration"] = generation
    return [new if c.get("type") == type_ else c for c in conditions] if old else [*conditions, new]


def condition(obj: dict, type_: str) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c.get("type") == type_), None)
