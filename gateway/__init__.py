"""The hospital gateway: a site's breathing readings, findings and alarms to the hospital's
systems over HL7 v2.6 (IHE PCD-01, PCD-04) and FHIR R4, as its own process beside the ward
view (docs/gateway.md)."""
