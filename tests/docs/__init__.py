"""Runnable docs: the collector that runs the examples of README.md and docs/.

The markers are described in docs/contributing.md.
"""
