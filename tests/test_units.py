import pytest

from lora_planner import LoraPlannerError, format_size, parse_size


@pytest.mark.parametrize("text,expected", [
    ("16GiB", 16 * 2**30), ("16G", 16 * 2**30), ("16000MiB", 16000 * 2**20), ("15.5GB", 15_500_000_000),
    ("512", 512), ("1.5 TiB", int(1.5 * 2**40)), ("64kb", 64_000), (1024, 1024),
])
def test_sizes_parse_binary_and_decimal_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GiB", "-4GiB", "0", "12 parsecs", "nanGiB", "inf", True])
def test_bad_sizes_name_the_field_and_a_fix(bad):
    with pytest.raises(LoraPlannerError) as err:
        parse_size(bad, field="--memory-budget")
    msg = str(err.value)
    assert msg.startswith("--memory-budget must be") and "\n" not in msg


def test_format_size_round_trips_through_parse():
    assert format_size(16 * 2**30) == "16.00 GiB"
    assert parse_size(format_size(85 * 2**20).replace(" ", "")) == 85 * 2**20


def test_errors_survive_pickling_so_worker_processes_can_raise_them():
    """Profiling discovers the model in a worker process; its one-line error must come back intact."""
    import pickle

    from lora_planner import LoraPlannerError
    from lora_planner.aggregation.updates import UpdateRejected

    for cls in (LoraPlannerError, UpdateRejected):
        e = pickle.loads(pickle.dumps(cls("MODEL", "a transformer with a list of blocks", "Foo", "Not supported.")))
        assert type(e) is cls and str(e) == "MODEL must be a transformer with a list of blocks; got Foo. Not supported."
