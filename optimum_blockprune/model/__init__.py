"""The model stage: architecture adapters (what a block is, how to remove it), gates that switch
blocks off without surgery, no-op stand-ins, surgery, loading, the branch-pruned checkpoint format
and the adapter registry."""
