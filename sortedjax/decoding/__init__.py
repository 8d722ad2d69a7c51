"""KV-cache decoding at any exit depth: plain, self-speculative and early-exit, each one compiled
on-device loop.

Works with any model that implements :class:`sortedjax.protocol.CausalLM` (``init_cache``,
``forward_cached``, ``logits_at_exit``, ``check_exit``, ``num_layers``, ``cfg``); nothing here
knows LLaMA. :mod:`~sortedjax.decoding.common` holds the prompt handling and the prefill;
:mod:`~sortedjax.decoding.plain`, :mod:`~sortedjax.decoding.speculative` and
:mod:`~sortedjax.decoding.early_exit` one ``lax.while_loop`` each: per-token host round trips are
gone, stop tokens and lengths are checked on the device, and every loop compiles once per
(batch, cache-length bucket) whatever the exit depth, sampling controls, draft exit, number of
drafted tokens or thresholds.
"""

from sortedjax.decoding.common import PAD, pad_prompts
from sortedjax.decoding.early_exit import early_exit_generate, thesis_thresholds
from sortedjax.decoding.plain import generate
from sortedjax.decoding.speculative import speculative_generate
from sortedjax.sampling import sample

__all__ = [
    "PAD",
    "early_exit_generate",
    "generate",
    "pad_prompts",
    "sample",
    "speculative_generate",
    "thesis_thresholds",
]
