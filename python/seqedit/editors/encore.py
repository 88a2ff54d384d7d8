"""ENCORE (Gupta et al., "Lifelong Sequential Knowledge Editing without Model Degradation",
arXiv 2502.01636): MEMIT with MPES and the Frobenius-norm constraint, as the registered editor
"encore". Values from the released configs (scalable-model-editing/encore @ b87d96d,
`hparams/ENCORE/*.json`); the constraint's formula is in norm.py.

* **Norm constraint**: μ = update_norm_lambda. The configs pair μ = 10 with λ = 15000
  (Llama2-7B) and with λ = 20000 (GPT2-XL); seqedit scales MEMIT's λ with the key width
  (memit.mom2_weight_for), so μ keeps the configs' ratio to that λ: λ/1500, or λ/2000 for
  LayerNorm residual streams (GPT-2 family, `spec.norm_bias`). Llama3-8B's config has μ = 20.
* **MPES** (`encore/compute_z.py`): stop once the target is the argmax at the scored positions,
  at the |prob_cutoff|-th forward where it is (a count, not a streak): 3 (Llama2-7B), 4
  (GPT2-XL), 2 (Llama3-8B) → `argmax_patience`. seqedit's `early_stop_on_argmax` checks every
  target token of every rewriting prompt. The code differs in two ways we do not copy: it
  skips the first rewriting prompt (the bare one; its comment says it means to skip the KL
  prompt, which is not in that tensor), and it compares the count of leading (prompt, token)
  pairs with a literal 5, which means "all five prompts" only for single-token targets.
  The loss < 5e-2 stop and the step cap stay, as there.

Everything else is seqedit's MEMIT default. The configs also set clamp 0.75 and weight decay 0.5
for Llama (their MEMIT baseline too, so not part of what ENCORE adds) and add the committed
edits' keys to the system (`add_prev_edits`, see norm.py); neither is done here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .memit import MemitConfig, MemitEditor, mom2_weight_for


@dataclass(frozen=True)
class EncoreConfig(MemitConfig):
    @classmethod
    def for_model(cls, spec, **overrides):
        lam = mom2_weight_for(spec)
        return cls._band_build(spec, overrides, mom2_update_weight=lam, early_stop_on_argmax=True,
                               argmax_patience=4 if spec.norm_bias else 3,
                               update_norm_weight=lam / (2000 if spec.norm_bias else 1500))


class EncoreEditor(MemitEditor):
    name = "encore"
