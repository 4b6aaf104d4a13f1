"""The one trainer (``lungwatch train``, :mod:`training.recipe.train`): the run config, the
losses, augmentation, masked-spectrogram pretraining, the quality-adaptive margin, and the
fit of the device's detector rules on validation."""
