"""Labelled text data and federated partitions (no torch; tokenisation loads it lazily)."""
from .load import Instructions, Records, load_instructions, load_records, read_rows
from .partition import Partition, partition

__all__ = ["Instructions", "Partition", "Records", "load_instructions", "load_records", "partition", "read_rows"]
