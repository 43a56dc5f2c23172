"""Benchmark cases, one module each, registered in ``bench.registry``."""
