"""The workstation: data, network, recipe, scores. Imports the front end from :mod:`edge.features`
(never a copy); never imports :mod:`export`, which reads the checkpoints written here."""
