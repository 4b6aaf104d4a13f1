"""Workstation code: uses :mod:`edge.features` (never a copy), never :mod:`export` (its reader)."""
