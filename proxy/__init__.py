"""An authenticating reverse proxy for token-protected vendor APIs."""

__version__ = "0.1.0"
