"""Embedding engine (issue #3): model loading, length-sorted batching, pooling, checkpointed shards.

Nothing here yet: the issue named above fills it in. Data flows one way,
storage -> embed -> selectors -> packing -> samplers, and no stage imports a later one.
"""
