"""Persistence: schema, migrations and the Store handle."""

from openworkbench.store.db import Store

__all__ = ["Store"]
