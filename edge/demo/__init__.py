"""``make demo`` (``run``): the whole pipeline on three recordings, its picture (``plot``,
``imaging``) and its subscriber (``subscriber``)."""
