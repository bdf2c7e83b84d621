"""JSPSH: shallow supervised cross-modal hashing with sparse high-dimensional codes (see :mod:`.solver`)."""
