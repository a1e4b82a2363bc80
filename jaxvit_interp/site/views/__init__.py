"""The four views of the paper's Figure 1, one module each: A :mod:`.overview`, B
:mod:`.importance`, C :mod:`.strength`, D :mod:`.pattern`."""
