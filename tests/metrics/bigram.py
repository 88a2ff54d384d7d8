"""A word-level bigram LM whose every prediction a test can plant by hand.

Each next-token logit depends only on the current token (`table[current]`), so what teacher forcing
scores and what greedy decoding produces are both known exactly; it speaks the small part of the
transformers interface the metrics use (logits, a pass-through cache, input embeddings' device).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = ["<pad>", "<eos>", "The", "capital", "of", "France", "Italy", "is", "Paris", "Rome", "Berlin", "the", "a", "city", "Where", "people", "speak", "language", "Lyon", "twin", "It", "Q:", "A:", "Madrid"]


assert len(set(WORDS)) == len(WORDS), "a repeated word would get two rows"


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


class _NoCache:
    """A bigram needs no past; readers still select and copy cache rows."""

    def batch_select_indices(self, indices) -> None:
        pass


class BigramLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        n = len(WORDS)
        gen = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(n, n, generator=gen, dtype=torch.float64),
                                        requires_grad=False)
        self.embed = torch.nn.Embedding(n, 2)

    def get_input_embeddings(self):
        return self.embed

    def prefer(self, after: str, *ranked: str, margin: float = 5.0) -> None:
        """After word `after`, make `ranked` the top predictions in that order."""
        row = self.table.data[WORDS.index(after)]
        top = float(row.max())
        for i, word in enumerate(ranked):
            row[WORDS.index(word)] = top + margin * (len(ranked) - i)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, logits_to_keep=0):
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits,
                               past_key_values=past_key_values or _NoCache())
