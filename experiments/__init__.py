"""The shipped experiments (YAML), installed as package data `mnist_search.experiments`.

Commands take them by name (`--experiment budget-8k`) or by path; see `config.find_experiment`."""
