"""How K replicas of a spec train at once, and how fast: packing them into one network, choosing
the layout that is faster on this machine, compiling the pack. Same numbers, less time."""
