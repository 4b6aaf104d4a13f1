"""One bed's chain, stage by stage: the ring buffer and front end (``pipeline``), signal quality
(``quality``, ``domain``) and the quality gate (``gate``), and the detector (``detector``)."""
