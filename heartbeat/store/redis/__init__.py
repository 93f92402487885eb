"""The Redis store: many instances sharing one Redis."""
