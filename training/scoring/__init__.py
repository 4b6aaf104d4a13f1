"""Scoring what the device detects: event, threshold-free and challenge scores, and the commands."""
