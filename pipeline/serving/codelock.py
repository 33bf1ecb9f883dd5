"""One process-wide lock between loading a version's own code and every `pipeline` import.

A registered version carries the `pipeline` package it was trained with, and loading it (its pyfunc's
`own_code`, versions registered long ago included) takes the process's `pipeline` modules out of
`sys.modules`, puts the version's copy first on `sys.path`, imports, and puts everything back. While
that runs, another load, or an `import pipeline...` on any other thread (a request handler, the
dashboard's script thread, the other alias's poller), would see the version's modules or a half-made
package, and two interleaved loads could leave the process with the wrong `pipeline` for good.

So the process holds one re-entrant lock: `registry.load_recommender` (the one way to load a version)
holds it for the whole load, and every `import` of a `pipeline` module on any thread takes it too,
through a wrapper around `builtins.__import__` installed before the first load. Only the old
version's own `own_code` can be made safe this way: it runs inside a load that the caller serialises.
The lock is kept on the wrapper itself, so that a copy of this module imported from a version's code
finds the same lock.

Why not a worker process per version: each would hold its own copy of the model (hundreds of MB to
GBs), and every request would cross a process boundary, on machines where a list costs milliseconds.
A load is rare (an alias move) and short, and imports of `pipeline` after start-up are few and cheap.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterator
from contextlib import contextmanager

PACKAGE = "pipeline"
_INSTALLING = threading.Lock()


def _names_pipeline(name: str, globals_: dict | None, level: int) -> bool:
    if level == 0:
        return name == PACKAGE or name.startswith(PACKAGE + ".")
    package = (globals_ or {}).get("__package__") or ""
    return package == PACKAGE or package.startswith(PACKAGE + ".")


def install() -> threading.RLock:
    """The process's code lock, with the import wrapper installed (once per process; idempotent)."""
    with _INSTALLING:
        installed = getattr(builtins.__import__, "code_lock", None)
        if installed is not None:
            return installed
        lock, original = threading.RLock(), builtins.__import__

        def import_under_lock(name, globals=None, locals=None, fromlist=(), level=0):
            if _names_pipeline(name, globals, level):
                with lock:
                    return original(name, globals, locals, fromlist, level)
            return original(name, globals, locals, fromlist, level)

        import_under_lock.code_lock = lock  # type: ignore[attr-defined]
        builtins.__import__ = import_under_lock
        return lock


@contextmanager
def loading_version() -> Iterator[None]:
    """Hold the code lock while a version's code is imported: no other load and no `pipeline` import
    on another thread can run meanwhile."""
    with install():
        yield
