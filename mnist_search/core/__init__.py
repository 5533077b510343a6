"""The lower floors: the spec (config), MNIST in memory (data), networks from specs (model) and the
layers they are made of, the errors a user can fix, and process settings. No MLflow, no Optuna."""
