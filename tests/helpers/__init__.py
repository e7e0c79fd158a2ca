"""What tests and benchmarks share: real sdns processes, store servers, namespaces, peers."""
