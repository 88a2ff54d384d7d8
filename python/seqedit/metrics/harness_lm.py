"""lm-eval's Hugging Face model with its context work shared across a question's choices.

lm-eval scores a multiple-choice item by running context + choice once per choice (it shares
only one-token continuations). `SharedContextLM` runs the context once and scores every choice from
its KV cache (`scoring.read_tokens`), so a five-choice item costs about one context forward instead
of five — the same log-likelihoods up to float rounding (tests/metrics/test_harness_lm.py).
Requests alone with their context (rolling perplexity windows, one-choice items), too long for
the window or with an empty continuation go through HFLM unchanged. Imported only when lm-eval
is installed.
"""
from __future__ import annotations

from lm_eval.models.huggingface import HFLM

from ..editors._text import pad_id
from .scoring import LOGITS_BYTES, read_tokens

class SharedContextLM(HFLM):
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, (_, context, _) in enumerate(requests):
            groups.setdefault(tuple(context), []).append(k)
        mine, theirs = [], []
        for context, ks in groups.items():
            fits = all(0 < len(requests[k][2]) and len(context) + len(requests[k][2])
                       <= self.max_length for k in ks)
            (mine if context and len(ks) > 1 and fits else theirs).append(ks)
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        alone = [k for ks in theirs for k in ks]
        if alone:
            answers = super()._loglikelihood_tokens([requests[k] for k in alone],
                                                    disable_tqdm=disable_tqdm,
                                                    override_bs=self._bounded_batch(
                                                        [requests[k] for k in alone],
                                                        override_bs))
            for k, answer in zip(alone, answers):
                out[k] = answer
        if mine:
            readings = read_tokens(self.model, [list(requests[ks[0]][1]) for ks in mine],
                                   [[list(requests[k][2]) for k in ks] for ks in mine],
                                   [0] * len(mine), pad=pad_id(self.tokenizer), eos=None,
                                   batch_size=self._batch(override_bs))
            for ks, reading in zip(mine, readings):
                for k, score in zip(ks, reading.scores):
                    out[k] = (score.logprob * len(score.token_hits), score.argmax)
                    self.cache_hook.add_partial("loglikelihood", requests[k][0], out[k])
        return out

    def _bounded_batch(self, requests, override_bs) -> int:
        """HFLM's batch, made small enough that its full-vocabulary logits (and their
        log-softmax) stay near LOGITS_BYTES: a batch of 16 WikiText windows of ~2,200 tokens is
        74 GB of logits with Gemma 3's 262k-token vocabulary."""
        longest = min(max(len(c) + len(t) for _, c, t in requests), self.max_length)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        return max(1, min(self._batch(override_bs), LOGITS_BYTES // (longest * vocab * 8)))

    def _batch(self, override_bs) -> int:
        """The batch asked for ("auto" is HFLM's probing, which this class does not do: 16)."""
        batch = override_bs or self.batch_size
        return batch if isinstance(batch, int) else 16
