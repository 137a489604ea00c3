"""The project's own text: it speaks of the product only, the README stays a user's README,
and product code and recipes never reach for a sibling checkout's data.

These tests read the tracked files of the git checkout (`git ls-files`); outside a git
checkout (an installed sdist) they skip.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve().relative_to(REPO_ROOT).as_posix()

# Phrases that tell how the project was developed rather than what it does. The patterns are
# case-insensitive; "helper" is caught only where it names a person, so helper functions pass.
DEVELOPMENT_TALK = [
    r"\bsessions? [0-9]",
    r"\bthis " r"session\b",  # split, so this file does not match its own patterns
    r"\bthe " r"helper\b|\bhelpers" r"'",
    r"\bissues? [0-9]+",
    r"\bwork-items?\b",
    r"\bmeasured on the way\b",
]
_DEVELOPMENT_TALK = re.compile("|".join(f"(?:{p})" for p in DEVELOPMENT_TALK), re.IGNORECASE)

README_MAX_LINES = 300


def development_talk(text: str) -> list[tuple[int, str]]:
    """(line number, matched phrase) for every line of `text` that speaks of development."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _DEVELOPMENT_TALK.search(line)
        if match:
            found.append((number, match.group(0)))
    return found


def tracked_files() -> list[str]:
    """The checkout's tracked paths, relative to its root; skips the test outside git."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked files to read")
    return [path for path in listing.stdout.decode().split("\0") if path]


def read_text(path: str) -> str | None:
    """The file's text, or None for a binary file (a NUL byte, or not UTF-8) or one that is gone."""
    try:
        data = (REPO_ROOT / path).read_bytes()
    except OSError:  # tracked but deleted in the working tree
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_the_scan_finds_development_talk_in_a_sentence_that_has_it():
    text = "Accuracy is 0.98.\nThis figure was measured in ses" "sion 7 on the shared machine.\n"
    assert development_talk(text) == [(2, "ses" "sion 7")]


@pytest.mark.parametrize("sentence", [
    "Measured by the hel" "per that built it.",
    "Fixed in Iss" "ue 12.",
    "see work-it" "em 3",
    "Measured on the w" "ay: 600 steps.",
    "as this ses" "sion showed",
    "the hel" "pers' test runs",
])
def test_the_scan_finds_each_kind_of_development_talk(sentence):
    assert development_talk(sentence), sentence


def test_the_scan_passes_helper_functions_and_plain_prose():
    text = "def _helper(x):\n    # a small helper for the loop\nThe session token expires.\n"
    assert development_talk(text) == []


def test_no_tracked_file_speaks_of_how_the_project_was_developed():
    offending = []
    for path in tracked_files():
        if path == THIS_FILE:  # it holds the patterns themselves
            continue
        text = read_text(path)
        if text is None:
            continue
        offending += [f"{path}:{number}: {phrase!r}" for number, phrase in development_talk(text)]
    assert not offending, "development talk in tracked files:\n" + "\n".join(offending)


def test_the_readme_has_at_most_three_hundred_lines():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_product_code_and_recipes_never_mention_a_shared_data_checkout():
    offending = []
    for path in tracked_files():
        if not path.startswith(("invkeras/", "recipes/")):
            continue
        text = read_text(path)
        if text is None:
            continue
        offending += [f"{path}:{number}" for number, line in enumerate(text.splitlines(), start=1)
                      if "../shared" in line]
    assert not offending, "'../shared' in product code or recipes:\n" + "\n".join(offending)
