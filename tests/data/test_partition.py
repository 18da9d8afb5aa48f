"""Partitions of real data (../shared/data) and of small data made here."""
from pathlib import Path

import numpy as np
import pytest

from lora_planner import LoraPlannerError
from lora_planner.cli.main import main
from lora_planner.data import load_records, partition
from lora_planner.data.partition import load_partition

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
BANKING = DATA / "banking77" / "train.csv"
DOLLY = DATA / "dolly15k" / "databricks-dolly-15k.jsonl"
needs_data = pytest.mark.skipif(not BANKING.exists(), reason="../shared/data is not beside the checkout")


@needs_data
def test_banking77_loads_with_its_77_intents():
    recs = load_records(BANKING, "text", "category")
    assert len(recs) == 10003 and len(recs.label_names) == 77  # sizes from ../shared/data/README.md


@needs_data
@pytest.mark.parametrize("method,kw", [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("size-skew", {"skew": 1.0})])
def test_every_record_goes_to_exactly_one_client(method, kw):
    recs = load_records(BANKING, "text", "category")
    part = partition(recs.labels, 10, method, seed=3, **kw)
    allidx = sorted(i for idx in part.clients.values() for i in idx)
    assert allidx == list(range(len(recs)))


@needs_data
def test_small_dirichlet_alpha_makes_clients_less_alike_than_iid():
    recs = load_records(BANKING, "text", "category")
    def spread(p):
        c = p.label_counts(recs.labels, 77).astype(float)
        dist = c / c.sum(1, keepdims=True)
        return float(np.abs(dist - dist.mean(0)).sum(1).mean())
    assert spread(partition(recs.labels, 10, "dirichlet", alpha=0.1)) > 3 * spread(partition(recs.labels, 10, "iid"))


@needs_data
def test_dolly_by_category_gives_each_client_its_categories():
    recs = load_records(DOLLY, "instruction", "category")
    assert len(recs.label_names) == 8
    part = partition(recs.labels, 8, "by-column", per_client=2, seed=1)
    held = (part.label_counts(recs.labels, 8) > 0).sum(1)
    assert held.tolist() == [2] * 8


def test_partition_round_trips_and_is_deterministic(tmp_path):
    labels = [i % 5 for i in range(200)]
    a = partition(labels, 4, "dirichlet", alpha=1.0, seed=7)
    assert a == partition(labels, 4, "dirichlet", alpha=1.0, seed=7)
    a.save(tmp_path / "p.json")
    assert load_partition(tmp_path / "p.json") == a


def test_an_empty_client_is_refused_with_a_fix():
    with pytest.raises(LoraPlannerError, match="empty"):
        partition([0] * 30 + [1] * 30, 20, "dirichlet", alpha=0.01, seed=0)


def test_missing_column_lists_the_ones_there(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("sentence,intent\nhi,a\n")
    with pytest.raises(LoraPlannerError, match="Known: intent, sentence"):
        load_records(f, "text", "intent")


def test_partition_cli_writes_file_and_errors_are_one_line(tmp_path, capsys):
    f = tmp_path / "d.csv"
    f.write_text("text,label\n" + "".join(f"t{i},{i % 3}\n" for i in range(30)))
    assert main(["partition", "--data", str(f), "--clients", "3", "--iid", "-o", str(tmp_path / "p.json")]) == 0
    assert len(load_partition(tmp_path / "p.json").clients) == 3
    capsys.readouterr()
    assert main(["partition", "--data", str(f), "--clients", "3", "--label-column", "intent", "-o", str(tmp_path / "q.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--label-column" in err[0]
    assert not (tmp_path / "q.json").exists()
