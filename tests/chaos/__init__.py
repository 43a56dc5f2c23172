"""Fault injection: process-level chaos (harness, soak) and the deterministic simulation."""
