"""A pickle payload for tamper tests: unpickling it would touch a marker file."""
import os


class Payload:
    """What a tampered weights file would carry: ``__reduce__`` runs ``os.system`` on load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
