"""The model registry: versions of `bookrec-ncf`, the promotion gate, promotion and rollback.

Aliases, never stages: `challenger` (the newest registered version), `production` (what the dashboard
and the API serve) and `previous` (what `rollback` returns to). `production` moves only after every
check of the gate passed; a refused or failed gate leaves it exactly where it was.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.ops.gate import GateDecision, GateThresholds
    from pipeline.serving.service import BookRecommender

from pipeline.ops import history

MODEL_NAME = "bookrec-ncf"
CHALLENGER, PRODUCTION, PREVIOUS = "challenger", "production", "previous"


class RegistryError(RuntimeError):
    """The registry cannot be reached, or a version/alias does not exist."""


def _alias_version(client, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException as err:
        if err.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise RegistryError(f"registry error reading alias {alias!r}: {err}") from err


def production_version(client) -> Any | None:
    return _alias_version(client, PRODUCTION)


def challenger_version(client) -> Any | None:
    return _alias_version(client, CHALLENGER)


def load_recommender(root: Path, version: str) -> BookRecommender:
    """The one way to load a registered version: its MLflow pyfunc, unwrapped to the
    `BookRecommender` it serves through (the API, the dashboard and the gate all call this)."""
    import mlflow

    from pipeline.ops import tracking
    from pipeline.serving.codelock import loading_version
    from pipeline.serving.compat import with_request_rules

    # No process-wide MLflow state: the alias pollers load versions from their own threads.
    client = tracking.client(root)
    source = client.get_model_version_download_uri(MODEL_NAME, str(version))
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=client.tracking_uri)
    with loading_version():  # the version's own code swaps sys.modules: nothing else may import meanwhile
        model = mlflow.pyfunc.load_model(local)
    return with_request_rules(model.unwrap_python_model().recommender)


def find_version(client, fingerprint: str) -> Any | None:
    """The version registered for this exact model (weights + config + data), if any."""
    found = client.search_model_versions(f"name='{MODEL_NAME}' and tags.fingerprint='{fingerprint}'")
    return found[0] if found else None


def register(client, model_uri: str, fingerprint: str, tags: dict[str, str]) -> tuple[Any, bool]:
    """Register the logged model (or return the version that already holds it) and mark it `challenger`.

    Returns (version, created). Idempotent: a retried or re-run task never creates a duplicate version.
    """
    from mlflow.exceptions import MlflowException

    existing = find_version(client, fingerprint)
    if existing is not None:
        return existing, False
    try:
        client.get_registered_model(MODEL_NAME)
    except MlflowException:
        client.create_registered_model(
            MODEL_NAME, description="NCF (GMF + MLP towers, side features) trained with BPR on Book-Crossing."
        )
    import mlflow

    # register_model passes the logged model's id along with its source, which a tracking server requires.
    registered = mlflow.register_model(model_uri, MODEL_NAME, tags={**tags, "fingerprint": fingerprint})
    version = client.get_model_version(MODEL_NAME, registered.version)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version.version)
    return version, True


def metric_tag(key: str) -> str:
    """'ndcg@10' -> 'metric.ndcg_at_10' (MLflow keys may not contain '@')."""
    return "metric." + key.replace("@", "_at_")


def metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    return {metric_tag(key): f"{value:.6f}" for key, value in metrics.items()}


def promoted_versions(client) -> list[str]:
    """Every version that ever served as `production` (the serving history), oldest first."""
    history.reconcile(client, MODEL_NAME, _version_of(production_version(client)))
    return list(dict.fromkeys(move.version for move in history.moves(client, MODEL_NAME)))


def split_fingerprint_of(client, version: str) -> str | None:
    return client.get_model_version(MODEL_NAME, str(version)).tags.get("split_fingerprint")


def record_decision(client, decision: GateDecision, thresholds: GateThresholds) -> None:
    """The decision as structured tags of the version: verdict, reasons, the thresholds it was made
    with, the versions it was compared with, each difference with its interval, the readers."""
    from dataclasses import asdict

    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    tags = {
        "gate": "passed" if decision.passed else "refused",
        "gate_reasons": json.dumps(decision.reasons),
        "gate_at": stamp,
        "gate_thresholds": json.dumps(asdict(thresholds)),
        "gate_references": json.dumps(decision.references),
        "gate_readers": str(decision.readers),
        "gate_rules": decision.rules,
        "gate_comparisons": json.dumps(
            [
                {
                    "reference": c.reference,
                    **{m: getattr(c, m).as_dict() for m in ("ndcg", "coverage", "novelty")},
                }
                for c in decision.comparisons
            ]
        ),
        **({} if decision.online is None else {"gate_online": json.dumps(decision.online)}),
    }
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAME, decision.version, key, value[:4900])
    client.update_model_version(MODEL_NAME, decision.version, description=f"[{stamp}] {decision.summary()}")


def gate_override(client, version: str, reason: str) -> dict[str, str | None]:
    """Move `production` to `version` without the gate (`bookrec registry promote`, which asks for
    the API token): recorded on the version and in the serving history as an override."""
    if not reason.strip():
        raise ValueError("a gate override needs a reason (--reason)")
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    client.get_model_version(MODEL_NAME, str(version))  # raises if it does not exist
    client.set_model_version_tag(
        MODEL_NAME, str(version), "gate_override", json.dumps({"at": stamp, "reason": reason[:4000]})
    )
    return promote(client, str(version), reason, by="gate override (bookrec registry promote)")


def promote(client, version: str, reason: str, by: str = "bookrec registry promote") -> dict[str, str | None]:
    """Move `production` to `version` and record the move; the version it leaves becomes `previous`."""
    target = client.get_model_version(MODEL_NAME, str(version))  # raises if it does not exist
    current = production_version(client)
    history.reconcile(client, MODEL_NAME, _version_of(current))
    if current is not None and str(current.version) == str(target.version):
        return {"production": str(target.version), "previous": _version_of(_alias_version(client, PREVIOUS))}
    _move_production(client, str(target.version), current, by, reason)
    client.set_model_version_tag(MODEL_NAME, target.version, "promoted_because", reason[:4900])
    return {"production": str(target.version), "previous": _version_of(current)}


def rollback(client, reason: str) -> dict[str, str | None]:
    """Move `production` back to the version that served before the current one, whoever moved the
    alias to the current one (the serving history says which); the current one becomes `previous`."""
    current = production_version(client)
    history.reconcile(client, MODEL_NAME, _version_of(current))
    target = history.served_before(history.moves(client, MODEL_NAME))
    if target is None:
        raise RegistryError("no earlier serving version to roll back to (the serving history has one entry)")
    _move_production(client, target, current, "bookrec registry rollback", reason)
    if current is not None:
        client.set_model_version_tag(MODEL_NAME, current.version, "rolled_back_because", reason[:4900])
    return {"production": target, "previous": _version_of(current)}


def _move_production(client, target: str, current: Any | None, by: str, reason: str) -> None:
    if current is not None:
        client.set_registered_model_alias(MODEL_NAME, PREVIOUS, current.version)
    client.set_registered_model_alias(MODEL_NAME, PRODUCTION, target)
    client.set_model_version_tag(
        MODEL_NAME, target, "promoted_at", datetime.now(UTC).isoformat(timespec="seconds")
    )
    history.record(client, MODEL_NAME, target, by, reason)


def _model_exists(client) -> bool:
    """Whether `bookrec-ncf` is registered; RegistryError when the registry cannot say (unreachable,
    refusing), so that "nothing registered" is never reported for a registry that did not answer."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(MODEL_NAME)
        return True
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise RegistryError(
            f"the registry at {client.tracking_uri} did not answer: {str(err)[:300]}"
        ) from err
    except Exception as err:  # the store itself (a database that cannot be opened, a refused connection)
        raise RegistryError(
            f"the registry at {client.tracking_uri} cannot be reached: {type(err).__name__}: {str(err)[:300]}"
        ) from err


def serving_history(client) -> list[dict[str, Any]]:
    """Every move of `production`, oldest first (reconciled with the alias first); [] when no model
    is registered, RegistryError when the registry cannot be read."""
    if not _model_exists(client):
        return []
    history.reconcile(client, MODEL_NAME, _version_of(production_version(client)))
    return [move.as_dict() for move in history.moves(client, MODEL_NAME)]


def _version_of(model_version: Any | None) -> str | None:
    return None if model_version is None else str(model_version.version)


def list_versions(client) -> list[dict[str, Any]]:
    """Every version, newest first; [] when no model is registered, RegistryError when the registry
    cannot be read."""
    if not _model_exists(client):
        return []
    aliases = client.get_registered_model(MODEL_NAME).aliases
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{MODEL_NAME}'", order_by=["version_number DESC"]):
        rows.append(
            {
                "version": str(mv.version),
                "aliases": ",".join(sorted(by_version.get(str(mv.version), []))),
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).strftime(
                    "%Y-%m-%d %H:%M"
                ),
                **{key: mv.tags.get(metric_tag(key), "") for key in ("ndcg@10", "recall@10", "coverage@10")},
                "gate": mv.tags.get("gate", ""),
                "run_id": mv.run_id,
            }
        )
    return rows
