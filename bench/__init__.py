"""Benchmarks of the agent: run each with ``python -m bench.<name>`` from the repository root.

They print figures and the machine they ran on; they never assert a time (see
docs/performance.md for the latest figures and how to read them).
"""
