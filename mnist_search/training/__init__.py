"""The training loop (`train`) and what a recipe can add to it: weight averaging, distillation.
Reports through a callback only; never prints, never logs."""
