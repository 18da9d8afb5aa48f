"""Labelled text data and federated partitions (no torch)."""
from .load import Records, load_records
from .partition import Partition, partition

__all__ = ["Partition", "Records", "load_records", "partition"]
