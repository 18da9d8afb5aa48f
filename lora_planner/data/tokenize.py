"""Tokenised mini-batches for the two task shapes (torch and transformers load here, lazily).

- ``seq-cls``: ``input_ids``, ``attention_mask``, ``labels`` (class index per example).
- ``causal-lm``: the prompt template below followed by the response and EOS; ``labels`` copy
  ``input_ids`` on the response tokens and are -100 on the prompt and padding, so the loss is
  the response's alone.

Sampling and batching are deterministic for a given seed.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from ..errors import LoraPlannerError
from .load import Instructions, Records

PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
PROMPT_WITH_CONTEXT = "### Instruction:\n{instruction}\n\n### Context:\n{context}\n\n### Response:\n"


def prompt_for(instruction: str, context: str = "") -> str:
    """The instruction-tuning prompt (Alpaca/Dolly style); the context section only when there is one."""
    if context.strip():
        return PROMPT_WITH_CONTEXT.format(instruction=instruction, context=context)
    return PROMPT.format(instruction=instruction)


def sample_indices(n: int, samples: int | None, seed: int, indices: Sequence[int] | None = None) -> list[int]:
    """``samples`` distinct indices drawn with ``seed`` (all of them, shuffled, when None)."""
    pool = list(range(n)) if indices is None else list(indices)
    if samples is None:
        samples = len(pool)
    if samples <= 0:
        raise LoraPlannerError("samples", "a positive number", samples, "E.g. --samples 128.")
    if samples > len(pool):
        raise LoraPlannerError("samples", f"at most the {len(pool)} records available", samples, f"Use --samples {len(pool)} or less.")
    return random.Random(seed).sample(pool, samples)


def tokenized_batches(tokenizer, data: Records | Instructions, batch_size: int = 8, max_length: int = 128,
                      samples: int | None = None, seed: int = 0, indices: Sequence[int] | None = None,
                      num_labels: int | None = None) -> list[dict]:
    """Mini-batches of torch tensors from ``samples`` records drawn with ``seed`` (among ``indices`` if given)."""
    import torch

    if batch_size <= 0:
        raise LoraPlannerError("batch_size", "a positive number", batch_size, "E.g. 8.")
    order = sample_indices(len(data), samples, seed, indices)
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if isinstance(data, Records):
            if num_labels is not None and max(data.labels[i] for i in idx) >= num_labels:
                raise LoraPlannerError("num_labels", f"more than the largest label index {max(data.labels)}", num_labels,
                                       f"Use --num-labels {len(data.label_names)}.")
            enc = tokenizer([data.texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                            "labels": torch.tensor([data.labels[i] for i in idx])})
        else:
            batches.append(_causal_batch(tokenizer, data, idx, max_length))
    return batches


def fixed_batch(tokenizer, data: Records | Instructions, idx: Sequence[int], seq_len: int) -> dict:
    """One mini-batch of these records padded (or cut) to exactly ``seq_len`` tokens: the shape the
    plan's memory was predicted at, whatever the texts' lengths."""
    import torch

    if isinstance(data, Records):
        enc = tokenizer([data.texts[i] for i in idx], padding="max_length", truncation=True, max_length=seq_len,
                        return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([data.labels[i] for i in idx])}
    return _causal_batch(tokenizer, data, idx, seq_len, pad_to=seq_len)


def _causal_batch(tokenizer, data: Instructions, idx: Sequence[int], max_length: int, pad_to: int | None = None) -> dict:
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if pad is None:
        pad = 0
    rows = []
    for i in idx:
        prompt = tokenizer(prompt_for(data.instructions[i], data.contexts[i]), add_special_tokens=False)["input_ids"]
        answer = tokenizer(data.responses[i], add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        ids = (prompt + answer)[:max_length]
        labels = ([-100] * len(prompt) + answer)[:max_length]
        if all(t == -100 for t in labels):  # prompt filled the window: keep the last response token trainable
            ids = (prompt[:max_length - len(answer[:1])] + answer[:1])
            labels = [-100] * (len(ids) - 1) + answer[:1]
        rows.append((ids, labels))
    width = pad_to or max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, (ids, lab) in enumerate(rows):
        input_ids[k, :len(ids)] = torch.tensor(ids)
        labels[k, :len(lab)] = torch.tensor(lab)
        mask[k, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
