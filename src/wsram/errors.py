"""User-facing errors: the command line prints them as one line and exits with code 2."""


class WsramError(Exception):
    """A mistake in the user's input (files, options, run folders), not a bug in wsram."""


class DataError(WsramError):
    """A data file is missing, truncated or not what it claims to be."""


class ConfigError(WsramError):
    """A configuration value or option is unknown, of the wrong type or out of range."""


class CheckpointError(WsramError):
    """A checkpoint is missing, truncated, unsafe, or from a different model."""
