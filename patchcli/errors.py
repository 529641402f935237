"""Exceptions raised by patchcli.

Every error a user can cause by bad input is a :class:`PatchcliError`. Its message
is one line that names the file (or subject) and the problem; the command line
prints it and exits with status 1, without a traceback unless ``--debug``.
"""

from __future__ import annotations


class PatchcliError(Exception):
    """A problem with the user's data or configuration (exit status 1)."""


class ConfigError(PatchcliError):
    """An invalid configuration file or option value."""


class DataError(PatchcliError):
    """An image, manifest or patch file that cannot be used as asked."""


class SystemFault(DataError):
    """A failure of the machine or its file systems (memory, open files, a stale NFS
    handle, an I/O error, a full disk), not of one subject's data: ``on_error: skip``
    never skips a subject for it."""


class PatchcliWarning(UserWarning):
    """Something suspicious in the input that does not stop the run."""
