"""The one trainer, ``lungwatch train``: config, losses, augment, pretrain, margin, rule fit."""
