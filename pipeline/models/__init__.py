"""Frozen pydantic models: the validated shape of every artifact. No I/O here."""
