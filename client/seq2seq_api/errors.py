"""The one input-error type of the options (seq2seq_api.decoding re-exports it): the server maps it to
INVALID_ARGUMENT, the web gateway to 400, the commands to a one-line error."""


class ConfigError(ValueError):
    """A config value or key is wrong; the message says which and what is allowed."""
