"""The pure core: types, events, ``apply`` and ``decide``. No I/O, no clock, no environment."""
