"""ISO 15118 high-level communication (HLC): an SECC sidecar and the agent's end of it.

Nothing here is imported on purpose: ``sidecar.py`` and ``evcc_sim.py`` run inside their own
virtual environment (``.venv-iso15118``, the ``iso15118`` package with its pinned
``cryptography`` and ``pydantic`` 1.x) and only import ``protocol.py`` (pure stdlib) from
here; ``client.py`` and ``hlc_config.py`` run in the agent. See docs/iso15118.md.
"""
