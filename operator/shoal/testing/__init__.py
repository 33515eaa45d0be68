"""Test helpers that are real servers and processes on loopback, shared by tests and benchmarks."""
