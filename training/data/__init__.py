"""The data a model learns from: the data sets (SPRSound, ICBHI 2017, a synthetic generator),
their features through the one front end with a disk cache (:mod:`training.data.features`),
frame targets from strong labels (:mod:`training.data.targets`) and whole recordings as
training streams (:mod:`training.data.recordings`)."""
