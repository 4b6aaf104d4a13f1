"""The hospital gateway (docs/gateway.md): a site's breathing readings, findings and alarms to
the hospital over HL7 v2.6 (IHE PCD-01, PCD-04) and FHIR R4, a process beside the ward view."""
