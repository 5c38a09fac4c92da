"""The benchmark's models and data: Llama shapes, random-init models, fixed synthetic QA batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from experiments.bench.config import N_BATCHES

Example = dict[str, list[int]]


@dataclass(frozen=True)
class ModelSpec:
    """A Llama shape plus the batch it is benchmarked with (forget and retain batches both `batch_size`)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    seq_len: int
    batch_size: int
    num_kv_heads: int | None = None
    micro_batch_size: int | None = None
    tie_word_embeddings: bool = True

    def llama_config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads or self.num_heads,
            max_position_embeddings=max(self.seq_len, 128),
            tie_word_embeddings=self.tie_word_embeddings,
            attention_bias=False,
            mlp_bias=False,
            pad_token_id=0,
        )


SIZES: dict[str, ModelSpec] = {
    # ~4.7M parameters (hidden 256, 4 layers, vocab 2048): the CPU default.
    "5m": ModelSpec(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024,
                    seq_len=64, batch_size=32),
    # Seconds-long smoke run for the unit test: checks plumbing and schema, not performance.
    "micro": ModelSpec(vocab_size=128, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                       seq_len=16, batch_size=4),
}
# Llama-3.2-1B's shape (random init); CUDA only.
LLAMA_1B = ModelSpec(vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                     intermediate_size=8192, seq_len=512, batch_size=16, micro_batch_size=8)


def build_model(spec: ModelSpec, seed: int = 0, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """Random-init Llama of `spec`, built directly on `device` (a 1B model never round-trips through CPU)."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(spec.llama_config())
    return model.to(dtype)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    distinct = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in distinct.values())


def grad_bytes(model: nn.Module) -> int:
    """Bytes of one set of gradients of the trainable parameters (a gradient has its parameter's dtype)."""
    distinct = {id(p): p for p in model.parameters() if p.requires_grad}
    return sum(p.numel() * p.element_size() for p in distinct.values())


def synthetic_examples(n: int, spec: ModelSpec, seed: int) -> list[Example]:
    """Fixed-length QA-shaped rows: a prompt quarter with labels -100, then answer tokens that carry the loss.

    Fixed length and a full attention mask make the token count per step exact and identical for all methods.
    """
    g = torch.Generator().manual_seed(seed)
    prompt = max(1, spec.seq_len // 4)
    out = []
    for _ in range(n):
        ids = torch.randint(3, spec.vocab_size, (spec.seq_len,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:],
                    "attention_mask": [1] * spec.seq_len})
    return out


def collate(batch: Sequence[Example]) -> dict[str, Tensor]:
    return {k: torch.tensor([ex[k] for ex in batch], dtype=torch.long) for k in batch[0]}


@dataclass
class Batches:
    """`N_BATCHES` (forget, retain) pairs; step k of every method uses pair k mod N_BATCHES."""

    forget: list[list[Example]]
    retain: list[list[Example]]

    @classmethod
    def make(cls, spec: ModelSpec, seed: int = 0) -> Batches:
        return cls([synthetic_examples(spec.batch_size, spec, seed + 2 * i) for i in range(N_BATCHES)],
                   [synthetic_examples(spec.batch_size, spec, seed + 2 * i + 1) for i in range(N_BATCHES)])

    def pair(self, k: int) -> tuple[list[Example], list[Example]]:
        return self.forget[k % N_BATCHES], self.retain[k % N_BATCHES]


