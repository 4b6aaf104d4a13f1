"""Scoring what the device detects: sed_eval's event and segment scores
(:mod:`training.scoring.detection`), the threshold-free scores, the SPRSound / ICBHI challenge
measures and Tasks, and the commands built on them (``lungwatch detect``, ``predict``,
``evaluate``, ``tasks``)."""
