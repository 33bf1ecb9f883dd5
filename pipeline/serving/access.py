"""Who may ask the API what: bearer tokens for writes (and for reads when configured), the bound on a
request's `exclude` list, the answer when the scoring queue is full, the client a request comes from."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from pipeline.serving.schemas import EXCLUDE, MAX_EXCLUDE, BearerCredentials


def split_isbns(values: list[str]) -> tuple[str, ...]:
    return tuple(part.strip().upper() for value in values for part in value.split(",") if part.strip())


def excluded_isbns(exclude: list[str] = EXCLUDE) -> tuple[str, ...]:
    """The request's `exclude` list, repeated or comma-separated: at most MAX_EXCLUDE books either way."""
    isbns = split_isbns(exclude)
    if len(isbns) > MAX_EXCLUDE:
        raise HTTPException(422, f"exclude names {len(isbns)} books; at most {MAX_EXCLUDE} are accepted")
    return isbns


def client_of(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def bearer_guard(*tokens: str):
    """A dependency that lets a request through only with `Authorization: Bearer <token>` for one of
    `tokens`: 401 without credentials, 403 with a wrong token (compared in constant time)."""

    def guard(credentials: BearerCredentials) -> None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                401, "this endpoint needs Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
            )
        given = credentials.credentials.encode()
        if not any([hmac.compare_digest(given, token.encode()) for token in tokens]):
            raise HTTPException(403, "the bearer token is not valid for this API")

    return guard


async def overloaded(request: Request, err: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the API is at capacity: {err}"}, status_code=503, headers={"Retry-After": "1"}
    )
