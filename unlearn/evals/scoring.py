"""Model-based per-item quantities: answer NLLs and greedy generations, batched.

These are the only evaluation functions that touch a model; everything downstream (unlearn.evals.metrics,
unlearn.benchmarks.tofu.evaluator.summarise) works on their outputs. Two properties matter more than speed:

- an item's score must not depend on which other items share its batch (padding, batch size, order), so that
  runs with different batch sizes or on different hardware are comparable. NLLs are therefore taken per
  example from the logits at answer positions only, and generation uses left padding with an attention mask;
- the functions must work on any device and dtype (a CPU float32 tiny model in tests, a bf16 model on a GPU),
  so inputs follow the model's device and log-probabilities are computed in float32 whatever the model dtype.

Items are sorted by length before batching (less padding, less compute) and results are returned in the
caller's order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unlearn.data.format import IGNORE_INDEX, QAFormatter
from unlearn.progress import bar as progress_bar


def _device(model: Any) -> torch.device:
    """The device inputs must go to: `model.device` for HF models, else that of the first parameter."""
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    return next(model.parameters()).device


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Put the model in eval mode (no dropout) under no_grad, and restore its training flag afterwards.

    Evaluation is called from inside training loops; silently leaving the model in eval mode would disable
    dropout for the rest of training.
    """
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length; longest first, so an out-of-memory shows up at once."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    with progress_bar(total=len(order), desc="evaluate", unit="item") as items_bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            yield batch
            items_bar.update(len(batch))


def answer_nll(
    model: Any,
    formatter: QAFormatter,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 32,
) -> np.ndarray:
    """Mean token NLL of each answer given its question's prompt, shape [n], float64.

    Only answer tokens count (labels from `formatter.encode`: -100 on the prompt and on padding); the eos that
    ends each answer is an answer token, as in training. The per-item mean is taken from that item's own
    token losses, so the value does not depend on batch composition (a batch-mean loss would weight items
    by their length).
    """
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    _check_batch_size(batch_size)
    n = len(questions)
    out = np.full(n, np.nan, dtype=np.float64)
    if n == 0:
        return out
    encoded = [formatter.encode(q, a) for q, a in zip(questions, answers, strict=True)]
    device = _device(model)
    with _eval_mode(model):
        for idx in _length_batches([len(e["input_ids"]) for e in encoded], int(batch_size)):
            batch = formatter.collate([encoded[i] for i in idx])
            input_ids = batch["input_ids"].to(device)
            attention_mask = batch["attention_mask"].to(device)
            labels = batch["labels"].to(device)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            # Position t predicts token t+1.
            targets = labels[:, 1:]
            keep = targets != IGNORE_INDEX
            token_logits = logits[:, :-1][keep].float()  # [n_answer_tokens, vocab]; float32 log-softmax
            token_nll = F.cross_entropy(token_logits, targets[keep], reduction="none")
            row = torch.arange(len(idx), device=device).unsqueeze(1).expand_as(targets)[keep]
            sums = torch.zeros(len(idx), dtype=torch.float64, device=device)
            sums.index_add_(0, row, token_nll.double())
            counts = keep.sum(dim=1)
            if bool((counts == 0).any()):
                bad = idx[int(torch.nonzero(counts == 0)[0, 0])]
                raise ValueError(f"item {bad} has no answer tokens (question {questions[bad][:80]!r})")
            out[idx] = (sums / counts.double()).cpu().numpy()
    return out


def _eos_ids(model: Any, formatter: QAFormatter) -> list[int]:
    """Token ids that end a generation: the formatter's eos plus any the model's generation config lists.

    Instruction-tuned models (Llama 3) end turns with a token other than the tokenizer's eos; stopping on only
    one of them would let the generation run on to `max_new_tokens`.
    """
    ids = [formatter.eos_id]
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(extra, int):
        extra = [extra]
    for e in extra or []:
        if int(e) not in ids:
            ids.append(int(e))
    return ids


def greedy_generate(
    model: Any,
    tokenizer: Any,
    formatter: QAFormatter,
    questions: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[str]:
    """Greedy (do_sample=False) continuation of each question's prompt, decoded without special tokens.

    Prompts are left-padded (`formatter.collate_prompts`) so every row's last column is its last prompt token,
    which is where a decoder-only model continues; the attention mask keeps padding out of attention and
    position ids. The prompt is stripped and the text is cut at the first end-of-sequence token, because in a
    batch a finished row is filled with padding (which may equal eos) until the longest row ends.
    """
    _check_batch_size(batch_size)
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    n = len(questions)
    out: list[str] = [""] * n
    if n == 0:
        return out
    eos_ids = _eos_ids(model, formatter)
    device = _device(model)
    lengths = [len(formatter.encode_prompt(q)) for q in questions]
    with _eval_mode(model):
        for idx in _length_batches(lengths, int(batch_size)):
            batch = formatter.collate_prompts([questions[i] for i in idx])
            input_ids = batch["input_ids"].to(device)
            attention_mask = batch["attention_mask"].to(device)
            # Explicit kwargs take precedence over the model's generation_config (e.g. a hub config with
            # do_sample=True and a temperature); sampling parameters are cleared so greedy decoding is exact.
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=int(max_new_tokens),
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=formatter.pad_id,
                eos_token_id=eos_ids,
            )
            new_tokens = generated[:, input_ids.shape[1] :].cpu().tolist()
            for row, i in enumerate(idx):
                toks = new_tokens[row]
                stop = next((j for j, t in enumerate(toks) if t in eos_ids), len(toks))
                out[i] = tokenizer.decode(toks[:stop], skip_special_tokens=True)
    return out


# ---------------------------------------------------------------------------------------------------- raw text
# MUSE scores raw text and continues raw prompts (no question-answer template): the functions below take token ids.
def token_logprobs(model: Any, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int = 32
                   ) -> list[np.ndarray]:
    """Log-probability of every token 1..T-1 of each sequence given its prefix (float64 arrays, caller's order).

    Token 0 (bos) is never a target, as in MUSE's `compute_ppl`. Batches are right-padded with an attention mask,
    so real tokens keep their positions and an item's values do not depend on its batch-mates; log-softmax is
    taken in float32 whatever the model's dtype.
    """
    _check_batch_size(batch_size)
    out: list[np.ndarray] = [np.empty(0)] * len(sequences)
    for i, seq in enumerate(sequences):
        if len(seq) < 2:
            raise ValueError(f"sequence {i} has {len(seq)} token(s); scoring needs at least 2")
    device = _device(model)
    with _eval_mode(model):
        for idx in _length_batches([len(s) for s in sequences], int(batch_size)):
            width = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), int(pad_id), dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(sequences[i])
                ids[row, :n] = torch.tensor(list(sequences[i]), dtype=torch.long)
                mask[row, :n] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            lp = lp.double().cpu().numpy()
            for row, i in enumerate(idx):
                out[i] = lp[row, : len(sequences[i]) - 1].copy()
    return out


def continue_greedy(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_id: int,
    eos_ids: Sequence[int],
    batch_size: int = 32,
) -> list[list[int]]:
    """Greedy continuation (token ids, prompt excluded, cut before the first eos) of each token-id prompt.

    Prompts are left-padded with an attention mask (the model continues from every row's last real token, and
    position ids follow the mask), sampling settings of the model's generation config are overridden, and rows that
    finished early are cut at their eos, so a continuation does not depend on the batch it was generated in.
    """
    _check_batch_size(batch_size)
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    out: list[list[int]] = [[] for _ in prompts]
    eos = [int(e) for e in eos_ids]
    device = _device(model)
    with _eval_mode(model):
        for idx in _length_batches([len(p) for p in prompts], int(batch_size)):
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), int(pad_id), dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(prompts[i])
                if n == 0:
                    raise ValueError(f"prompt {i} is empty")
                ids[row, width - n :] = torch.tensor(list(prompts[i]), dtype=torch.long)
                mask[row, width - n :] = 1
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=int(max_new_tokens),
                do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, pad_token_id=int(pad_id),
                eos_token_id=eos or None,
            )
            new_tokens = generated[:, width:].cpu().tolist()
            for row, i in enumerate(idx):
                toks = new_tokens[row]
                stop = next((j for j, t in enumerate(toks) if t in eos), len(toks))
                out[i] = toks[:stop]
    return out
