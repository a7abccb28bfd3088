"""Every shipped model profile cites the document its numbers were actually read from.

``source`` must name a document (a URL, a paper / arXiv id, or a fixture in this
repository), and a profile whose notes say the official repository was gated or
unreadable must not cite that official page as its ``source``: it cites the copy
that was read and keeps the official URL in its notes as
``official config: <url> (not readable here)``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import SHIPPED

REPO = Path(__file__).resolve().parents[1]

URL = re.compile(r"https?://[^\s()<>'\"]+")
ARXIV = re.compile(r"\barXiv[: ]\s*\d{4}\.\d{4,5}\b", re.IGNORECASE)
FIXTURE = re.compile(r"\btests/fixtures/[\w./-]+")
# notes saying the official repository (not a "gated MLP") could not be read
UNREADABLE = re.compile(
    r"\bgated\b(?!\s+(?:MLP|linear|unit))|not readable|could not be read|not in the (?:search )?index"
    r"|not found in full|not among the pages readable",
    re.IGNORECASE,
)
OFFICIAL = re.compile(r"official config: (\S+) \(not read(?:able)? here\)")

REGISTRY = SHIPPED
MODELS = sorted(REGISTRY.models.values(), key=lambda m: m.name)


def _flat(text: str) -> str:
    return " ".join((text or "").split())


def _hf_repo(url: str) -> str | None:
    """``owner/name`` of a Hugging Face URL (model or dataset), else None."""
    m = re.match(r"https?://huggingface\.co/(?:datasets/)?([^/\s]+/[^/\s]+)", url)
    return m.group(1).lower() if m else None


def _names_document(source: str) -> bool:
    if URL.search(source) or ARXIV.search(source):
        return True
    return any((REPO / path.rstrip(".,;")).is_file() for path in FIXTURE.findall(source))


def test_profiles_loaded():
    assert len(MODELS) >= 40


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_source_names_a_document(model):
    source = (model.source or "").strip()
    assert source, f"{model.name}: empty source"
    assert _names_document(source), (
        f"{model.name}: source {source!r} names no URL, arXiv id or existing fixture"
    )


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_unreadable_official_page_is_not_the_source(model):
    notes = _flat(model.notes)
    official = OFFICIAL.findall(notes)
    if UNREADABLE.search(notes):
        assert official, (
            f"{model.name}: notes say the official repository could not be read but do not name it as "
            "'official config: <url> (not readable here)'"
        )
    source = model.source.strip()
    for url in official:
        url = url.rstrip(".,;")
        assert url not in source, f"{model.name}: source cites the unread official page {url}"
        repo = _hf_repo(url)
        if repo:
            assert _hf_repo(source) != repo, (
                f"{model.name}: source {source} is in the unread official repo {repo}"
            )


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_params_source_does_not_claim_an_unread_page(model):
    """A page the notes list as not read may appear in params_official_source only as
    'not readable here' (the figure is then cited from the copy that was read)."""
    cited = _flat(model.params_official_source or "")
    for url in OFFICIAL.findall(_flat(model.notes)):
        url = url.rstrip(".,;")
        assert url not in cited, f"{model.name}: params_official_source cites the unread page {url}"


@pytest.mark.parametrize(
    ("notes", "flagged"),
    [
        ("GeGLU gated MLP, tied embeddings", False),
        ("The official meta-llama repository is gated and its config.json could not be read here.", True),
        ("the official HF page itself was not in the search index", True),
        ("Config read in full on the official HF page.", False),
    ],
)
def test_unreadable_pattern(notes, flagged):
    assert bool(UNREADABLE.search(notes)) is flagged
