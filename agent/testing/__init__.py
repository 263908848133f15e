"""Test-side code that production never imports, and that the wheel leaves out.

The emulators (:mod:`agent.emulators`) and the benchmark (:mod:`agent.bench`) are left out of
the wheel the same way; they run from a source checkout (``make demo``, ``make bench``).
"""
