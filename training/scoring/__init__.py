"""Scoring what the device detects: sed_eval's event and segment scores, the threshold-free
scores, the SPRSound / ICBHI challenge measures and Tasks, and the commands built on them."""
