"""The serving history: every move of the `production` alias, whoever made it.

Each move is one tag on the registered model (`serving.000001`, ...: version, time, who or what,
reason), so the CLI, the dashboard and the MLflow UI read the same record. bookrec records its own
moves (the gate, `bookrec registry promote` and `rollback`); a move made elsewhere (by hand in the
MLflow UI) is noticed by `reconcile`, which the API and the dashboard run whenever they see the
alias change, and which every command runs before it reads the history.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

PREFIX = "serving."
BY_HAND = "outside bookrec (by hand in the MLflow UI, or another client)"


@dataclass(frozen=True)
class Move:
    seq: int
    version: str
    at: str
    by: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def moves(client: Any, model_name: str) -> list[Move]:
    """The recorded moves, oldest first."""
    tags = client.get_registered_model(model_name).tags
    found = []
    for key, value in tags.items():
        if key.startswith(PREFIX) and key[len(PREFIX) :].isdigit():
            data = json.loads(value)
            found.append(
                Move(int(key[len(PREFIX) :]), str(data["version"]), data["at"], data["by"], data["reason"])
            )
    return sorted(found, key=lambda move: move.seq)


def record(client: Any, model_name: str, version: str, by: str, reason: str) -> Move:
    known = moves(client, model_name)
    move = Move(
        known[-1].seq + 1 if known else 1,
        str(version),
        datetime.now(UTC).isoformat(timespec="seconds"),
        by,
        reason[:1000],
    )
    body = {k: v for k, v in move.as_dict().items() if k != "seq"}
    client.set_registered_model_tag(model_name, f"{PREFIX}{move.seq:06d}", json.dumps(body))
    return move


def reconcile(client: Any, model_name: str, production: str | None) -> Move | None:
    """Record the alias's current version if the history does not end with it (a move made outside
    bookrec); returns the move recorded, if any."""
    if production is None:
        return None
    known = moves(client, model_name)
    if known and known[-1].version == str(production):
        return None
    reason = "the production alias was found here" if known else "the history starts here"
    return record(client, model_name, str(production), BY_HAND, reason)


def served_before(history: list[Move]) -> str | None:
    """The version that served before the one serving now (the last move's), or None."""
    if not history:
        return None
    current = history[-1].version
    for move in reversed(history[:-1]):
        if move.version != current:
            return move.version
    return None
