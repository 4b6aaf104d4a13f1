"""The one trainer (``lungwatch train``): run config, losses, augmentation, masked-spectrogram
pretraining, the quality-adaptive margin, and the fit of the detector rules on validation."""
