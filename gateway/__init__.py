"""The hospital gateway: a site's breathing readings and findings to the hospital's systems.

It runs as its own process beside the ward view: it subscribes to the site's MQTT topics
(:mod:`gateway.service`), turns each reading and finding into an HL7 v2.6 message of the IHE
Patient Care Device profile PCD-01 (Device Enterprise Communication, ORU^R01;
:mod:`gateway.hl7`) and/or a FHIR R4 Observation (:mod:`gateway.fhir`), keeps every message
in a durable queue per destination (:mod:`gateway.outbox`, SQLite) and sends them in order
(MLLP, :mod:`gateway.mllp`, waiting for each acknowledgement; FHIR conditional updates):
nothing is lost or sent twice while a receiver is down. docs/gateway.md describes the
mapping.
"""
