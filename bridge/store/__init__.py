"""Persistent state on disk: the address book (SQLite)."""
