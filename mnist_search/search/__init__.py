"""The Optuna side: sampling a spec from a space under the budget, the objective, the study's
sampler and pruner, where studies are stored, and what is recorded on their trials."""
