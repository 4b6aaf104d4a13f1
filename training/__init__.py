"""The workstation: the data (``training.data``), the network and its checkpoint
(``training.models``), the recipe that trains it (``training.recipe``) and the scores that
judge it (``training.scoring``). Imports the front end from :mod:`edge.features` (one front
end, never a copy); never imports :mod:`export`, which reads the checkpoints it writes."""
