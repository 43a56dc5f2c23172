"""Fuzzing of the RPC surface with Hypothesis."""
