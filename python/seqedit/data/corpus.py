"""Packaged plain-text corpora for the second-moment statistics of MLP keys (and perplexity)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

from ._io import packaged, read_text


def _wikipedia_vital() -> list[str]:
    # Sorted by title so the order, and any prefix a caller takes, does not depend on how the
    # JSON object happened to be written.
    pages = json.loads(read_text(packaged("corpus/wikipedia_vital/summaries_en-us.json.gz")))
    return [pages[title]["extract"] for title in sorted(pages)]


_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


def _wikitext_2() -> list[str]:
    # One string per article: split before each top-level " = Title = " heading line. The text
    # is WikiText's own (tokenised, with <unk> and @-@), line breaks kept.
    articles: list[list[str]] = []
    for line in read_text(packaged("corpus/wikitext-2/test.txt.gz")).splitlines():
        if _ARTICLE_HEADING.match(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    texts = ("\n".join(lines).strip() for lines in articles)
    return [text for text in texts if text]


CORPORA: Mapping[str, Callable[[], list[str]]] = MappingProxyType({
    "wikipedia_vital": _wikipedia_vital,
    "wikitext-2": _wikitext_2,
})


def corpus(name: str = "wikipedia_vital") -> list[str]:
    """Documents of a packaged corpus, in a fixed order; a new list on every call.

    "wikipedia_vital": lead sections of ~10k Wikipedia "vital articles" (10,033 texts, 4.9 MB),
    sorted by title. "wikitext-2": the WikiText-2 test split, one string per article.
    """
    try:
        read = CORPORA[name]
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}: known corpora are "
                         f"{', '.join(sorted(CORPORA))}") from None
    return read()
