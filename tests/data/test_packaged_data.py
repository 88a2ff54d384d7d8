import gzip
import hashlib
import json
import re
from importlib.resources import files

import pytest

from seqedit.data import corpus
from seqedit.data.corpus import CORPORA
from seqedit.data.loaders import DATASETS

BUDGET_BYTES = 5_000_000  # keep the wheel lean; raise only with a reason in files/README.md


def packaged_files():
    root = files("seqedit.data") / "files"
    found, todo = {}, [(root, "")]
    while todo:
        node, prefix = todo.pop()
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                todo.append((child, name + "/"))
            else:
                found[name] = child
    return found


def readme_table(heading_line):
    """{first column: second column} of the README table that starts after `heading_line`."""
    text = (files("seqedit.data") / "files" / "README.md").read_text(encoding="utf-8")
    rows = text.split(heading_line, 1)[1].lstrip("\n").split("\n\n", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|", rows, flags=re.M))


def test_package_data_is_reachable_through_importlib_resources():
    found = packaged_files()
    wanted = {f for d in DATASETS.values() for _, f in d.splits}
    wanted |= {"corpus/wikipedia_vital/summaries_en-us.json.gz", "corpus/wikitext-2/test.txt.gz"}
    assert wanted <= set(found)
    assert set(found) - wanted == {"README.md"}, "every packaged file is used and documented"
    assert sum(len(f.read_bytes()) for f in found.values()) < BUDGET_BYTES


def test_readme_documents_every_file_with_its_checksum():
    found = set(packaged_files()) - {"README.md"}
    sums = readme_table("sha256 of the uncompressed bytes:")
    assert set(sums) == found
    for name, expected in sums.items():
        raw = gzip.decompress((files("seqedit.data") / "files" / name).read_bytes()) \
            if name.endswith(".gz") else (files("seqedit.data") / "files" / name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == expected.strip("`"), name
    provenance = readme_table("| file | loaded as |")
    assert set(provenance) >= found


def test_wikipedia_vital_corpus():
    texts = corpus()
    assert texts == corpus("wikipedia_vital")
    assert len(texts) == 10_033 and all(isinstance(t, str) and t.strip() for t in texts)
    assert texts[0].startswith("0 is a number")  # titles sorted: "0" comes first
    texts.clear()
    assert len(corpus()) == 10_033  # every call gets its own list


def test_wikipedia_vital_order_is_sorted_titles(shared_data):
    with gzip.open(shared_data / "corpus/wikipedia_vital/summaries_en-us.json.gz", "rt") as f:
        pages = json.load(f)
    assert corpus() == [pages[t]["extract"] for t in sorted(pages)]


def test_wikitext_2_articles():
    articles = corpus("wikitext-2")
    assert len(articles) == 62
    assert articles[0].startswith("= Robert <unk> =")
    assert all(re.match(r"= [^=].* =", a) for a in articles)
    text = gzip.decompress((files("seqedit.data") / "files/corpus/wikitext-2/test.txt.gz"
                            ).read_bytes()).decode()
    assert [w for a in articles for w in a.split()] == text.split()  # nothing lost or reordered


def test_unknown_corpus():
    with pytest.raises(ValueError, match="unknown corpus 'wikipedia'.*wikipedia_vital, wikitext-2"):
        corpus("wikipedia")
    assert set(CORPORA) == {"wikipedia_vital", "wikitext-2"}
