"""Test-side code that production never imports, and that the wheel leaves out.

The emulators (:mod:`agent.testing.emulators`) and the benchmark (:mod:`agent.testing.bench`) are left out of
the wheel the same way; they run from a source checkout (``make demo``, ``make bench``).
"""
