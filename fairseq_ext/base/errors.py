"""The package's user-facing error type."""

from __future__ import annotations


class UserError(RuntimeError):
    """An error caused by the user's input or environment (a bad file, a wrong option, a missing step).

    Its message names the file, line or option and says what to do; the command-line runner
    (:func:`fairseq_ext.base.cli.run_cli`) prints it without a traceback and exits with status 2.
    """
