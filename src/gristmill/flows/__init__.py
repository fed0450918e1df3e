"""Prefect tasks, flows and deployments wiring the stages together (issue #6).

The only place that imports prefect.

Nothing here yet: the issue named above fills it in. Data flows one way,
storage -> embed -> selectors -> packing -> samplers, and no stage imports a later one.
"""
