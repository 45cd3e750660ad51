"""Builders for tests, benchmarks and the offline demo pipelines; nothing in the runtime package imports them."""
