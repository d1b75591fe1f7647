"""Bytes <-> arrays: reading DATA, writing files. Never imports core (torch side)."""
