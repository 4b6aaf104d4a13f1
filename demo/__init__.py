"""``make demo`` (``run``): the whole pipeline on three recordings, its picture (drawn with
:mod:`wardview.plot`) and its subscriber (``subscriber``); its settings are ``demo.yaml``."""
