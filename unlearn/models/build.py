"""Model loading (hub or local directory) and construction of tiny random-init Llamas.

Loading is deliberately conservative: safetensors only (no pickle deserialisation of untrusted checkpoints),
and `trust_remote_code` is off unless a config turns it on explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from unlearn.errors import ConfigError

DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "auto": "auto",
}


def resolve_dtype(dtype: str | torch.dtype, key: str = "model.dtype") -> torch.dtype | str:
    """Map a config string to a torch dtype; unknown names raise ConfigError naming `key`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"{key}: {dtype!r} not one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    path: str | Path, dtype: str | torch.dtype = "float32", trust_remote_code: bool = False
) -> PreTrainedModel:
    """Load a causal LM from a hub id or a local directory (safetensors weights only)."""
    return AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=resolve_dtype(dtype),
        use_safetensors=True,
        trust_remote_code=bool(trust_remote_code),
    )


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer saved with a model (hub id or local directory)."""
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=bool(trust_remote_code))


def build_llama(
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position_embeddings: int = 512,
    seed: int = 0,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    tie_word_embeddings: bool = True,
    num_key_value_heads: int | None = None,
) -> LlamaForCausalLM:
    """A randomly initialised Llama (float32), reproducible in `seed`.

    Tied embeddings by default: at these sizes the embedding matrix is a large share of the parameters, and
    tying halves it without hurting memorisation.
    """
    if hidden_size % num_heads:
        raise ConfigError(f"model.arch.hidden_size: {hidden_size} is not divisible by num_heads={num_heads}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_key_value_heads or num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
        attention_bias=False,
        mlp_bias=False,
    )
    # fork_rng so building a model never perturbs the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.bos_token_id = bos_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
