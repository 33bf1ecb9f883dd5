"""Secrets the project makes for itself, in files only their owner can read.

A file is created with its final permissions (os.open with O_CREAT | O_EXCL and mode 0o600), so there
is no moment at which it is world-readable; an existing file is read, never rewritten. The
environment wins where a deployment sets the secret itself (docker compose).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_secret_once(path: Path, value: str) -> str:
    """Write `value` to `path` readable by its owner only, unless the file exists; return what the file holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value)
    return value


def api_token_file(root: Path) -> Path:
    return root / "run" / "api_token"


def api_token(root: Path, create: bool = True) -> str | None:
    """The bearer token of the API's write endpoints: $BOOKREC_API_TOKEN, else run/api_token (made on
    first use when `create`)."""
    if token := os.environ.get("BOOKREC_API_TOKEN"):
        return token
    path = api_token_file(root)
    if path.is_file() or create:
        return write_secret_once(path, secrets.token_urlsafe(32))
    return None


def api_read_token_file(root: Path) -> Path:
    return root / "run" / "api_read_token"


def api_read_token(root: Path) -> str:
    """The bearer token of the API's reads when `serve.read_token` puts them behind one:
    $BOOKREC_API_READ_TOKEN, else run/api_read_token (made on first use). The write token reads too."""
    if token := os.environ.get("BOOKREC_API_READ_TOKEN"):
        return token
    return write_secret_once(api_read_token_file(root), secrets.token_urlsafe(32))
