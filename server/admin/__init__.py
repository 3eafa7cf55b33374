"""Sluiceway's admin gRPC service (sluiceway.admin.v1.Admin) and the `sluiceway rollout` command."""
