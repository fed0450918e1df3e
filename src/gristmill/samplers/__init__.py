"""IterableDataset streams, mixing schedules, batch-size controllers, resumable state (issue #5).

Nothing here yet: the issue named above fills it in. Data flows one way,
storage -> embed -> selectors -> packing -> samplers, and no stage imports a later one.
"""
