"""Peer servers sluiceway is benchmarked against; see README.md here."""
