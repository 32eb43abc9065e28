"""CPython tests of the node firmware (sans-IO state machines; the HAL-backed parts live in hil/)."""
