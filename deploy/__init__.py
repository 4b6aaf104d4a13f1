"""Device inventory, bundles, service units and ``make deploy DEVICE=...``."""
