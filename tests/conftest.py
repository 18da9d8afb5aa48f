"""Shared fixtures: tiny models written as config.json files (never from a hub)."""
from __future__ import annotations

import json

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


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama") / "config.json"
    path.write_text(json.dumps(TINY_LLAMA))
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
