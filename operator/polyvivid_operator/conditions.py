"""Status conditions in the Kubernetes convention (polyvivid.api.status.Condition): the transition
time moves only when the status does."""

from __future__ import annotations

from datetime import datetime, timezone

from polyvivid.api.status import Condition


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[Condition], type_: str, status: bool, reason: str, message: str,
                  generation: int | None) -> list[Condition]:
    """A new list with the condition `type_` set; the others kept as they are."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.type == type_), None)
    changed_at = old.last_transition_time if old and old.status == value else now()
    new = Condition(type=type_, status=value, reason=reason, message=message, last_transition_time=changed_at,
                    observed_generation=generation)
    return [new if c.type == type_ else c for c in conditions] if old else [*conditions, new]


def condition(obj: dict, type_: str) -> dict | None:
    """A condition of any object's status (e.g. a RayService's), as the API server returns it."""
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c.get("type") == type_), None)
