"""The runtime: the loop over every bed (``loop``), its configuration (``config``), the event
outbox (``outbox``) and whole recordings through the same path (``offline``)."""
