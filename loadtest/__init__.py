"""Load generation and benchmarks against sluiceway and its peers."""
