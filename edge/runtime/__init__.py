"""The bedside runtime (``loop``, ``config``, ``outbox``); ``offline``: recordings, same path."""
