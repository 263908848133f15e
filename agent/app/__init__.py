"""Composition and operator commands: the runtime, check, status, resync and unlink, watermarks,
leadership, migrate-state and the health endpoints. Commands return reports; the CLI renders them."""
