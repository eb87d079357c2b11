"""The paper's study on top of the pgn library: the method comparison (``pgn-bench``), its protocol,
cache and report. Nothing in :mod:`pgn` imports it."""
