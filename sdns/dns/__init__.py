"""The DNS side of sdns: wire format, zone data, the answer cache, the servers."""
