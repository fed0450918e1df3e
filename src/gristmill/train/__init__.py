"""The small proxy model and trainer used by selection ablations (issue #7).

Nothing here yet: the issue named above fills it in. Data flows one way,
storage -> embed -> selectors -> packing -> samplers, and no stage imports a later one.
"""
