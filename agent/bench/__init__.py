"""``make bench``: what the agent costs in calls, time and memory, measured against the emulators.

The emulators run in the benchmark's own process with a fixed latency injected into every
request; the agent runs in a separate process (:mod:`agent.bench.worker`), so the two never
share a CPU or a heap and the agent's CPU time and peak RSS are its own. Every call the agent
makes is counted by the emulators' recorder.

Modules: :mod:`~agent.bench.worker` (the agent process and its driver), :mod:`~agent.bench.polling`
(the reference per-incident polling strategy), :mod:`~agent.bench.profiling` (where the time of
a cycle goes), :mod:`~agent.bench.scenarios` (the measurements), :mod:`~agent.bench.scale`
(100,000 links), :mod:`~agent.bench.report` (the tables and ``BENCHMARKS.md``).
"""
