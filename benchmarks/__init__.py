"""Benchmark harness for heartbeat beside the reference peer nchan (see README.md)."""
