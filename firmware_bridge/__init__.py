"""Wearable stethoscope wire protocol, transports and device emulator.

Depends only on numpy (numba, when installed, for the fast CRC and frame scanner; pyserial
and soundfile lazily, for serial links and the emulator's audio). Never imports torch, and
never imports ``edge`` (``edge.sources.bridge`` imports this package, not the reverse).

- ``protocol``: frame layout v1, payload codecs, :func:`~firmware_bridge.protocol.encode_frame`
  (spec: ``docs/firmware-protocol.md``; C twin: ``firmware_bridge/c/``);
- ``crc32c``: CRC-32C (numba kernel or NumPy position tables);
- ``parser``: incremental, resynchronising frame parser with counters;
- ``assembler`` / ``drift`` / ``timeline``: per-stream jitter buffer, gaps, restarts, drift;
- ``receiver``: parser + one assembler per stream; ``link``: a transport feeding a receiver;
- ``transport`` / ``senders`` / ``urls``: UDP, TCP (reconnect with backoff), serial;
- ``devicemodel`` / ``emulator``: ``lungwatch emulate``; ``cli``: ``lungwatch bridge``.
"""
