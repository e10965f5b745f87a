"""Where and how work runs: study configurations, torch threads, Ray.

`config` fills configuration dataclasses from defaults, a TOML file and flags, validated;
`threads` sets torch's thread count for a block of work; `cluster` starts or joins Ray with a
deadline and runs independent jobs (grid chunks, search trials) on one `Executor`.

Layer rule: imports only the layers below it (results, core) and `lossprobe.errors`; Ray
is imported lazily (an optional dependency).
"""
