"""Workstation side: data sets, models, losses, augmentation, metrics and CLIs.

Imports the front end from :mod:`edge.features` (one front end, never a copy).
"""
