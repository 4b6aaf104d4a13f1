"""Wearable stethoscope wire protocol (spec: ``docs/firmware-protocol.md``), transports and
device emulator; ``lungwatch bridge`` and ``lungwatch emulate``.

Depends on numpy, google-crc32c and cryptography (protocol v2's ChaCha20-Poly1305); numba, when
installed, for the fast frame scanner; pyserial and soundfile lazily, for serial links and the
emulator's audio. Never imports torch, and never imports ``edge`` (``edge.sources.bridge``
imports this package, not the reverse)."""
