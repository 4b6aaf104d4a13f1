"""Lung-sound data sets: SPRSound, ICBHI 2017 and a synthetic generator."""
