"""Compute clusters: one contract (base.py), one module or package per scheduler."""
