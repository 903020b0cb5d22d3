"""Compiled prototypes measured by the benchmarks (never part of the installed package)."""
