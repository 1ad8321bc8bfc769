"""OCPP protocol layer: the RPC session shared by all versions and the per-version adapters."""
