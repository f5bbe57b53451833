"""One exception family for the library; the CLI maps it to exit codes in one place."""

from __future__ import annotations


class HgsearchError(Exception):
    """Base of every error hgsearch raises on purpose; the message is one actionable line."""

    exit_code = 1


class UsageError(HgsearchError):
    """The user asked for something invalid (bad option value, unknown name): exit code 2."""

    exit_code = 2


class DataError(HgsearchError):
    """A dataset is missing, truncated or malformed."""


class StorageError(HgsearchError):
    """The study storage cannot be opened, read or written."""


class StudyMismatchError(UsageError):
    """Resuming a study with settings that differ from the ones it was created with."""


class TrialFailed(HgsearchError):
    """One trial failed (non-finite loss, out of memory); the study records it and goes on."""
