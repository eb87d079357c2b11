"""The ``pgn`` command line (sits on top of the library)."""
