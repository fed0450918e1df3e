"""FAISS clustering and selection methods, one module each, in a registry by name (issue #4).

Nothing here yet: the issue named above fills it in. Data flows one way,
storage -> embed -> selectors -> packing -> samplers, and no stage imports a later one.
"""
