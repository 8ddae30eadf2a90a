"""Errors a user can cause: the CLI prints their message as one line and exits non-zero."""


class ConcealerError(Exception):
    """Base of every error whose message is meant for the person running the tool."""

    exit_code = 1


class UsageError(ConcealerError):
    """Bad options or option combinations."""


class InputError(ConcealerError):
    """The input is missing, not a video, or in a form this operation cannot handle."""


class OutputError(ConcealerError):
    """The output cannot be written (exists, unwritable, or the muxer refuses the streams)."""


class Interrupted(ConcealerError):
    """Ctrl-C stopped the run before its outputs were written; the message says how far it got."""

    exit_code = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C
