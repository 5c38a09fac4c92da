"""A small byte-level BPE tokenizer trained on an embedded world's text.

The embedded benchmarks train their models from scratch, so they also need their own tokenizer. A vocabulary
fitted to the world keeps sequences short (most words become one token), which is what makes memorisation on
a CPU fast. Byte-level pre-tokenisation is used (rather than a plain whitespace split) because decoding must
reproduce the text exactly: ROUGE on greedy generations compares strings, and a whitespace pre-tokenizer would
lose the spaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from unlearn.errors import ConfigError

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
"""Order fixes the ids: pad 0, bos 1, eos 2, unk 3 (stable across vocab sizes, handy when reading tensors)."""


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it for `transformers`.

    Training is deterministic for a given list of texts, so the same world always yields the same ids (the
    model cache key relies on it). The 256 byte symbols are always in the vocabulary, so any string, including
    one outside the world, can be encoded without `<unk>`.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ConfigError(f"model.arch.vocab_size: must be > {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> None:
    """Save with `save_pretrained` (tokenizer.json + config), loadable by `AutoTokenizer`."""
    tokenizer.save_pretrained(str(directory))


def load_trained_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer written by `save_tokenizer` (no remote code, local files only)."""
    return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
