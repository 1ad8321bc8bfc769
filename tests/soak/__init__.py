"""Reliability campaigns (issue 18): the promises of docs/durability.md at scale.

Each module is a script with a count argument and a ``--quick`` mode, run from the repository
root with the project's environment::

    python -m tests.soak.power_cuts --cuts 1000        # SIGKILLs of `cp-agent run`, 3 versions
    python -m tests.soak.hostile_frames --frames 100000
    python -m tests.soak.long_outage --messages 10000
    python -m tests.soak.soak --sessions 10000
    python -m tests.soak.hardware_faults              # every hardware fault, 3 versions

Every script prints its figures (and one ``RESULT {json}`` line, as the benchmarks do) and
exits non-zero when a promise broke (a session lost, a crash, a CALL not answered per spec);
none asserts a time.  tests/test_campaigns.py runs each in quick mode so that none can rot.
"""
