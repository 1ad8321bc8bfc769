"""OCPP 2.0.1 adapter: device model, transactions as TransactionEvents, over the shared core."""
