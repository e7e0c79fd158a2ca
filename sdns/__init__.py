"""sdns: a pluggable DNS and service-discovery server."""
