"""The hospital gateway: a site's breathing readings and findings to the hospital's systems.

It runs as its own process beside the ward view: it subscribes to the site's MQTT topics,
turns each reading and finding into an HL7 v2.6 message of the IHE Patient Care Device
profile PCD-01 (Device Enterprise Communication, ORU^R01), keeps every message in a durable
queue (:mod:`gateway.outbox`, SQLite) and sends them in order over MLLP
(:mod:`gateway.mllp`), waiting for each acknowledgement: nothing is lost or sent under a
second control id while the receiver is down. docs/gateway.md describes the mapping.
"""
