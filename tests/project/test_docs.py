"""The README and docs/ stay true: every relative link (and its #anchor) resolves, and every
`lps <command> --flag` they show is a flag that command has."""

from __future__ import annotations

import contextlib
import io
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# `lps <command> [<subcommand>]`, then the rest of the command line (up to a comment or a backtick)
COMMAND = re.compile(r"\blps ((?:data|toy) [a-z-]+|[a-z][a-z-]*)([^`#\n|]*)")
COMMANDS = {"train", "eval", "data generate", "data prepare", "data robot", "agents", "report", "toy list",
            "toy figure2", "toy figure3", "sweep", "serve", "robot-sim", "serve-replay"}  # fmt: skip


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(), flags=re.M)}


def test_docs_pages_exist_and_readme_is_short():
    assert (ROOT / "README.md").stat().st_size <= 12 * 1024
    assert len(list((ROOT / "docs").glob("*.md"))) >= 6


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.name}: broken links {broken}"


@lru_cache(maxsize=None)
def flags_of(command: str) -> frozenset[str]:
    """Every --flag the command's --help lists (for `train`: with every agent's fields)."""
    from lps.agents import REGISTRY
    from lps.cli import main

    argvs = [[*command.split(), "--help"]]
    if command == "train":
        argvs += [["train", "--agent", name, "--help"] for name in REGISTRY]
    text = ""
    for argv in argvs:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit):
            main(argv)
        text += out.getvalue()
    return frozenset(re.findall(r"--[a-z][a-z0-9-]*", text))


def test_every_flag_shown_exists():
    unknown = []
    for page in PAGES:
        for line in page.read_text().splitlines():
            for m in COMMAND.finditer(line):
                command = m.group(1)
                if command not in COMMANDS:
                    continue
                own = m.group(2).split(" -- ")[0]  # after a bare `--`: arguments for another command
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", own):
                    if flag not in flags_of(command):
                        unknown.append(f"{page.name}: lps {command} {flag}")
    assert not unknown, "flags the commands do not have:\n" + "\n".join(sorted(set(unknown)))
