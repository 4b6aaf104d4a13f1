"""The data sets (SPRSound, ICBHI 2017, synthetic), their cached features, frame targets from
strong labels, and whole recordings as training streams."""
