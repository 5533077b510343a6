"""`python -m mnist_search ...` = the `mnist-search` command (used to start --jobs workers)."""

from .cli import main

main()
