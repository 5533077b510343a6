"""`python -m mnist_search ...` = the `mnist-search` command (used to start --jobs workers)."""

from mnist_search.cli import main

main()
