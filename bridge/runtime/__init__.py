"""Wiring: builds the components from a config, runs them together (the daemon), observes them."""
