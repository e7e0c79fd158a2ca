"""The HTTP registration API."""
