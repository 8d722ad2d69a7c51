"""The one offline tokenizer builder: a lower-case word-level ``tokenizers`` tokenizer trained on
given texts, wrapped as a ``transformers`` fast tokenizer (saved and loaded like any hub tokenizer).

Two styles of special tokens:

* ``"causal"`` (the built-in LLaMA-style base models): ``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<unk>``=3;
* ``"bert"`` (the built-in encoders): ``[PAD]``=0, ``[UNK]``=1, ``[CLS]``=2, ``[SEP]``=3, ``[MASK]``=4 and
  BERT's pair template (``[CLS] a [SEP]`` / ``[CLS] a [SEP] b [SEP]``, token types 0 / 1).

The vocabulary is ``extra_words`` then ``texts``, ordered as ``tokenizers``' word-level trainer orders it.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL_TOKENS = {"causal": ("<pad>", "<s>", "</s>", "<unk>"), "bert": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}


def build_tokenizer(texts: Iterable[str], extra_words: Iterable[str] = (), *, style: str = "causal"):
    """A word-level fast tokenizer over ``extra_words`` + ``texts`` with ``style``'s special tokens."""
    if style not in SPECIAL_TOKENS:
        raise ValueError(f"style must be one of {tuple(SPECIAL_TOKENS)}, got {style!r}")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS[style]
    unk = specials[3] if style == "causal" else specials[1]
    tok = Tokenizer(models.WordLevel(unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(specials), min_frequency=1 if style == "causal" else 0)
    tok.train_from_iterator([*extra_words, *texts], trainer=trainer)
    if style == "causal":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token=unk
        )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=unk,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
