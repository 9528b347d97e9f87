"""sshtun: a self-hosted reverse tunnel manager built on plain SSH."""

__version__ = "0.1.0"
