"""The pure core: records, the field merge, safety valves and text. No I/O, no clock, no logging."""
