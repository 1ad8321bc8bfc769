"""Hardware abstraction layer for cp-agent: interfaces, drivers and the mock HAL."""
