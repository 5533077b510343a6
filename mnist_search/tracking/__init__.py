"""MLflow: the store and its runs, one run sink fed by the training callback, a study's
parent run, the registry and the study plots. Imports nothing from training."""
