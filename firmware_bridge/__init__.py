"""Wearable stethoscope wire protocol, transports and device emulator.

Depends on numpy, google-crc32c and cryptography (protocol v2's ChaCha20-Poly1305); numba,
when installed, for the fast frame scanner; pyserial and soundfile lazily, for serial links
and the emulator's audio. Never imports torch, and never imports ``edge`` (``edge.sources.bridge``
imports this package, not the reverse).

- ``protocol``: frame layouts v1 and v2, payload codecs, session keys,
  :func:`~firmware_bridge.protocol.encode_frame` (spec: ``docs/firmware-protocol.md``; C twin:
  ``firmware_bridge/c/``);
- ``parser``: incremental, resynchronising frame parser with counters and the security policy;
- ``session``: v2's receive policy (sessions, anti-replay window, persisted state);
- ``keys``: device keys (files, folders, provisioning) and the key-beyond-loopback rule;
- ``assembler`` / ``drift`` / ``timeline``: per-stream jitter buffer, gaps, restarts, drift;
- ``receiver``: parser + one assembler per stream; ``link``: a transport feeding a receiver;
- ``transport`` / ``senders`` / ``urls``: UDP, TCP (reconnect with backoff), serial;
- ``devicemodel`` / ``emulator``: ``lungwatch emulate``; ``cli``: ``lungwatch bridge``.
"""
