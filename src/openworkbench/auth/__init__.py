"""Authentication (who is calling) and the permission policy (what they may do)."""
