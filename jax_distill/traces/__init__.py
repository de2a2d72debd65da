"""Trace stages: generate -> compress -> truncate, reading and writing the record format of store.py."""
