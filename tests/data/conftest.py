"""Shared fixtures for the seqedit.data tests."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

# The curated development copy the packaged files were taken from (absent outside this project).
SHARED_DATA = Path(os.environ.get("SEQEDIT_SHARED_DATA",
                                  Path(__file__).resolve().parents[3] / "shared" / "data"))

ROME_RECORDS = [
    {
        "case_id": 0,
        "pararel_idx": 2796,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is",
            "relation_id": "P103",
            "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": "French", "id": "Q150"},
            "subject": "Danielle Darrieux",
        },
        "paraphrase_prompts": [
            "Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
            "An album was recorded for Capitol Nashville but never released. Danielle Darrieux "
            "spoke the language",
        ],
        "neighborhood_prompts": [
            "The mother tongue of Léon Blum is",
            "The native language of Montesquieu is",
        ],
        "attribute_prompts": ["J. R. R. Tolkien is a native speaker of"],
        "generation_prompts": ["Danielle Darrieux's mother tongue is"],
    },
    {
        "case_id": 1,
        "pararel_idx": 8,
        "requested_rewrite": {
            "prompt": "{} is known for",
            "relation_id": "P101",
            "target_new": {"str": "physics", "id": "Q413"},
            "target_true": {"str": "chemistry", "id": "Q2329"},
            "subject": "Marie Curie",
        },
        "paraphrase_prompts": ["Marie Curie worked in the field of"],
        "neighborhood_prompts": ["Linus Pauling is known for"],
        "attribute_prompts": [],
        "generation_prompts": [],
    },
]


@pytest.fixture
def rome_records():
    return copy.deepcopy(ROME_RECORDS)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"development data copy not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def word_tokenizer():
    """A `tokenizers.Tokenizer` whose token count is the number of whitespace-separated words."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return tok
