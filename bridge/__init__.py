"""kaspa-tor-bridge: run an unmodified rusty-kaspa kaspad over Tor."""

__version__ = "0.1.0"
