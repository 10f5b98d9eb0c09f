"""The error type the CLI turns into a one-line message and exit code 2."""


class CLIError(Exception):
    """A user error (bad argument, missing file, ...): printed as one line, exit code 2."""
