"""What each command does, as a library call returning a typed result: train, study, verify,
export, frontier; and where the work runs (devices, threads, worker processes)."""
