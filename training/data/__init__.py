"""SPRSound, ICBHI 2017 and synthetic data; cached features; frame targets; training streams."""
