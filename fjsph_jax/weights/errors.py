"""Errors raised while importing pretrained weights.

Every error is a ``ValueError`` (a bad path or file is a user error), names the
checkpoint it was reading and, for key problems, lists every offending key, so a
model is never built from a checkpoint that only partly matches it.
"""

from __future__ import annotations

from typing import Sequence

# How many keys of one kind an error message lists before it says "... and N more".
_MAX_LISTED = 40


class CheckpointError(ValueError):
    """A checkpoint cannot be imported as asked (base class of the errors below)."""


class CheckpointFormatError(CheckpointError):
    """The path is missing, corrupt, or not in any format this package reads."""


class UnsupportedCheckpointError(CheckpointError):
    """The checkpoint is readable but its architecture (or a variant of it) is not supported."""


class CheckpointKeysError(CheckpointError):
    """Tensors missing from the checkpoint, left over in it, or of the wrong shape.

    Attributes:
      missing: checkpoint keys the importer needs but the file lacks.
      unexpected: checkpoint keys the importer does not know what to do with.
      mismatched: ``(key, found_shape, expected_shape)`` triples.
    """

    def __init__(
        self,
        source: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple, tuple]] = (),
        what: str = "the model",
    ):
        self.source = source
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)
        lines = [f"{source}: the checkpoint does not match {what}; nothing was loaded."]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {_listing(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {_listing(self.unexpected)}")
        if self.mismatched:
            shapes = [
                f"{key} {tuple(found)} (expected {tuple(want)})"
                for key, found, want in self.mismatched
            ]
            lines.append(f"  shape mismatches ({len(shapes)}): {_listing(shapes)}")
        super().__init__("\n".join(lines))


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    extra = len(items) - _MAX_LISTED
    return shown + (f", ... and {extra} more" if extra > 0 else "")
