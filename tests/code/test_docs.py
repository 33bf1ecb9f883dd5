"""The README and docs/ read true against the code: every repository path they name exists, every
`bookrec ...` command line they show parses, every params.yaml key they name exists, and the command
table in docs/cli.md holds each command's own help."""

from __future__ import annotations

import fnmatch
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# Where the repository's own files live; paths below data/, reports/, models/, logs/, run/ are made
# at run time and are not checked.
SOURCE_ROOTS = ("pipeline", "dags", "dashboard", "benchmarks", "tests", "docs", "docker", "scripts", ".ci")
SOURCE_FILES = (
    "params.yaml",
    "dvc.yaml",
    "data.dvc",
    "Makefile",
    "Dockerfile",
    "docker-compose.yaml",
    "pyproject.toml",
    "requirements.lock",
    ".env.example",
    "README.md",
)
PATH = re.compile(
    r"(?<![\w./-])((?:" + "|".join(re.escape(r) for r in SOURCE_ROOTS) + r")/[\w./*{},-]*"
    r"|(?:" + "|".join(re.escape(f) for f in SOURCE_FILES) + r"))(?![\w/-])"
)
CODE_SPAN = re.compile(r"`([^`]+)`")
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = ("bash", "sh", "shell", "console")  # fenced blocks whose lines are command lines
LINK = re.compile(r"\]\(([^)#\s]+)")


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


def _code(page: Path, shell_only: bool = False) -> tuple[list[str], list[str]]:
    """(inline code spans, lines of fenced code blocks (of shell blocks only, if `shell_only`),
    continuation lines joined)."""
    text = _text(page)
    inline = CODE_SPAN.findall(FENCE.sub("", text))
    lines = []
    for language, block in FENCE.findall(text):
        if not shell_only or language.strip() in SHELL:
            lines += block.replace("\\\n", " ").splitlines()
    return [" ".join(span.split()) for span in inline], lines


def _named_paths(page: Path) -> set[str]:
    inline, lines = _code(page)
    found = set()
    for chunk in [*inline, *lines, _text(page)]:
        for match in PATH.findall(chunk):
            found.add(match.rstrip(".,:;)"))
    return found


def _exists(path: str) -> bool:
    if "{" in path:  # a{b,c}d: every alternative
        head, rest = path.split("{", 1)
        alternatives, tail = rest.split("}", 1)
        return all(_exists(head + choice + tail) for choice in alternatives.split(","))
    if "*" in path:
        return any(REPO_ROOT.glob(path))
    return (REPO_ROOT / path).exists()


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_repository_path_named_exists(page):
    missing = sorted(path for path in _named_paths(page) if not _exists(path))
    links = [link for link in LINK.findall(_text(page)) if "://" not in link]
    missing += [link for link in links if not (page.parent / link).exists()]
    assert missing == [], f"{_page_id(page)} names files that do not exist: {missing}"


@cache
def _root_command():
    return typer.main.get_command(app)


def _bookrec_commands(page: Path) -> list[tuple[list[str], bool]]:
    """Every `bookrec ...` command line of the page, as (words, whole): a code block's line is a whole
    command line; an inline span may name a command without its arguments."""
    inline, lines = _code(page, shell_only=True)
    found = []
    for chunk, whole in [*((span, False) for span in inline), *((line, True) for line in lines)]:
        line = chunk.split(" #", 1)[0]
        match = re.search(r"(?:^|[\s/])bookrec (.*)$", line)
        if match is None or line.lstrip().startswith("#"):
            continue
        command = re.split(r"\s(?:\||&&|;|>)\s", match.group(1))[0].replace('"..."', '"text"')
        words = [w.strip("[]") for w in shlex.split(command, posix=True)]
        words = [w.removesuffix("...") for w in words if w.strip("[].")]
        found.append((words, whole))
    return found


def _resolve(words: list[str]):
    """The command the words name, and the words left for it."""
    command, path = _root_command(), []
    while hasattr(command, "commands") and words and words[0] in command.commands:
        path.append(words[0])
        command, words = command.commands[words[0]], words[1:]
    return command, path, words


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_bookrec_command_line_shown_parses(page):
    problems = []
    for words, whole in _bookrec_commands(page):
        command, path, rest = _resolve(words)
        if not path or hasattr(command, "commands"):
            problems.append(f"`bookrec {' '.join(words)}`: no such command")
            continue
        shown = CliRunner().invoke(app, [*path, "--help"])
        if shown.exit_code != 0:
            problems.append(f"`bookrec {' '.join(path)} --help` failed: {shown.output[-300:]}")
            continue
        try:
            if whole:
                command.make_context(" ".join(["bookrec", *path]), list(rest))
            else:  # a command named in prose: its options must exist
                options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
                unknown = [w for w in rest if w.startswith("--") and w.split("=")[0] not in options]
                assert not unknown, f"no option {unknown}"
        except Exception as err:
            problems.append(f"`bookrec {' '.join(words)}`: {type(err).__name__}: {err}")
    assert problems == [], f"{_page_id(page)}:\n" + "\n".join(problems)


@cache
def _params() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def _param_exists(dotted: str) -> bool:
    def walk(node, keys) -> bool:
        if not keys:
            return True
        if not isinstance(node, dict):
            return False
        return any(walk(node[key], keys[1:]) for key in node if fnmatch.fnmatchcase(str(key), keys[0]))

    return walk(_params(), dotted.split("."))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_params_key_named_exists(page):
    sections = tuple(_params())
    inline, lines = _code(page)
    named = set()
    for chunk in [*inline, *lines]:
        pattern = r"(?<![\w./-])((?:" + "|".join(sections) + r")\.[a-z0-9_*.]*[a-z0-9_*])(?![\w/-])"
        for match in re.findall(pattern, chunk):
            if not match.endswith((".py", ".md", ".json", ".yaml", ".csv", ".parquet")):
                named.add(match)
    missing = sorted(key for key in named if not _param_exists(key.split(":")[0]))
    assert missing == [], f"{_page_id(page)} names params.yaml keys that do not exist: {missing}"


def test_the_command_table_holds_every_command_and_its_own_help():
    table = _text(REPO_ROOT / "docs" / "cli.md")

    def commands(node, path):
        if hasattr(node, "commands"):
            for name, sub in node.commands.items():
                yield from commands(sub, [*path, name])
        else:
            yield " ".join(path), " ".join((node.help or "").strip().split("\n\n")[0].split())

    expected = [f"| `{path}` | {text} |" for path, text in commands(_root_command(), ["bookrec"])]
    missing = [row for row in expected if row not in table]
    assert missing == [], "docs/cli.md lacks (or words otherwise) these rows:\n" + "\n".join(missing)
