"""Bridges to systems other than the CSMS (energy managers, building automation).

Each module here is optional: the composition root imports it only when its configuration
section is present, so a station that does not use it loads none of its dependencies.
"""
