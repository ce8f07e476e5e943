"""Typed errors. Library code raises them; only cli.py turns them into exit codes."""

from __future__ import annotations


class KdcliError(Exception):
    """A failure with a message meant for the user (exit 1: the job ran and failed)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class BadInput(KdcliError):
    """Bad input from the user: profile, paths, checkpoints, data (exit 2)."""

    exit_code = 2


class ProfileError(BadInput):
    """The profile file or an override is invalid."""


class CheckpointError(BadInput):
    """A checkpoint is missing, corrupted or does not match its config."""


class DataError(BadInput):
    """A data file is missing, empty or malformed."""


class GateFailed(KdcliError):
    """A check ran and its result missed a threshold (parity, retention, ...)."""


class TrainingDiverged(KdcliError):
    """A loss became NaN or infinite."""


class ProfileDeprecation(FutureWarning):
    """A profile field moved: the old place is still read; the command line shows it as one `warning:` line."""


class DataWarning(UserWarning):
    """Data kdcli reads, but not whole (sentences cut at data.max_length): one `warning:` line that counts them."""
