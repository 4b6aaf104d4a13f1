"""``make demo``: the pipeline on three recordings (``run``, ``demo.yaml``) and ``subscriber``."""
