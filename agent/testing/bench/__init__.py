"""``make bench``: what the agent costs in calls, time and memory, measured against the emulators.

The emulators run in the benchmark's own process with a fixed latency injected into every
request; the agent runs in a separate process (:mod:`agent.testing.bench.worker`), so the two never
share a CPU or a heap and the agent's CPU time and peak RSS are its own. Every call the agent
makes is counted by the emulators' recorder.

Modules: :mod:`~agent.testing.bench.worker` (the agent process and its driver),
:mod:`~agent.testing.bench.polling` (the reference per-incident polling strategy),
:mod:`~agent.testing.bench.profiling` (where the time of a cycle goes),
:mod:`~agent.testing.bench.scenarios` (the measurements), :mod:`~agent.testing.bench.scale`
(100,000 links), :mod:`~agent.testing.bench.report` (the tables and ``BENCHMARKS.md``).
"""
