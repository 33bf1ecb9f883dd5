"""The REST API's request and response shapes and its path and query parameters (pydantic, FastAPI)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Query
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from pipeline.serving.service import MAX_K

USER_ID = PathParam(min_length=1, max_length=32, pattern=r"^[\w.-]+$", description="Book-Crossing User-ID")
ISBN = PathParam(min_length=1, max_length=32, pattern=r"^[\w.-]+$", description="ISBN-10 or ISBN-13")
K = Query(10, ge=1, le=MAX_K, description="How many books")
BEARER = HTTPBearer(auto_error=False, description="The API's write token (run/api_token)")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
MAX_EXCLUDE = 50  # books one request may exclude, however the list is written
EXCLUDE = Query(
    [],
    max_length=MAX_EXCLUDE,
    description=f"ISBNs never to list in this answer (repeat the parameter, or comma-separate; at most {MAX_EXCLUDE})",
)
HISTORY = Query(
    "all",
    pattern="^(all|train)$",
    description="all: everything the reader is known to have read (serving). train: the evaluation "
    "protocol's history and exclusions, as `bookrec evaluate` ranks (replays such as `bookrec simulate`)",
)
MAX_PER_AUTHOR = Query(
    None,
    ge=0,
    le=MAX_K,
    description="At most this many books by one author (0: no cap; default: the model's)",
)


class Book(BaseModel):
    rank: int
    isbn: str
    score: float
    title: str | None = None
    author: str | None = None
    year: int | None = None
    publisher: str | None = None
    cover_url: str | None = None


class Recommendations(BaseModel):
    request_id: str = Field(description="Name this list when posting what the reader did with it")
    arm: str = Field(description="production, or challenger for a reader in an A/B experiment's other arm")
    user_id: str | None = None
    known_reader: bool
    model_version: str
    books: list[Book]


class SimilarBooks(BaseModel):
    request_id: str
    isbn: str
    model_version: str
    books: list[Book]


class ExperimentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["off", "ab", "shadow"]
    challenger_share: float = Field(0.5, ge=0, le=1)
    salt: str = Field("exp-1", min_length=1, max_length=64)


class ExperimentOut(ExperimentIn):
    source: str = Field(description="params.yaml, or run time (set through the admin endpoint or the CLI)")
    challenger_version: str | None = None
    mde: float | None = Field(None, description="relative change an A/B experiment's planned size resolves")
    power: float | None = Field(None, description="probability of resolving it at the planned size")


class Unavailable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("unavailable", max_length=200)


class NewBook(BaseModel):
    """A book to add to the catalog (the dump's columns); checked by the same rules as `bookrec books add`."""

    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=500)
    author: str | None = Field(None, max_length=300)
    year: int | None = Field(None, description="Year of publication")
    publisher: str | None = Field(None, max_length=300)
    image_url: str | None = Field(None, max_length=500, description="Cover image URL")


class AddedBook(NewBook):
    isbn: str


class InteractionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    isbn: str = Field(min_length=1, max_length=32, pattern=r"^[\w.-]+$")
    rating: int = Field(0, ge=0, le=10, description="0 = read without rating, 1..10 explicit rating")
    request_id: str | None = Field(
        None, min_length=1, max_length=32, pattern=r"^[0-9a-f]+$", description="The list it was chosen from"
    )


class InteractionOut(BaseModel):
    user_id: str
    isbn: str
    rating: int
    stored_at: str


class NewReader(BaseModel):
    model_config = ConfigDict(extra="forbid")
    age: float | None = Field(None, ge=0, le=130)
    location: str | None = Field(None, max_length=200, description="city, region, country")
    liked_isbns: list[str] = Field(default_factory=list, max_length=50)
    k: int = Field(10, ge=1, le=MAX_K)


class Health(BaseModel):
    status: str = Field(
        description="ok; degraded (serving, but not the version the alias names, the registry cannot be "
        "read, or run-time rules are stale); or no model"
    )
    model_version: str | None = Field(description="the version actually serving")
    production_version: str | None = Field(None, description="the version the production alias names")
    error: str | None = None
    stale_rules: list[str] = Field(
        default_factory=list,
        description="run-time rules in force that could not be reread from the store (experiment, unavailable books)",
    )
