"""The sync engine: one cycle per workspace, its conversation, hooks and sweeps."""
