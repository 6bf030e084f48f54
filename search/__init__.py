"""Hyperparameter search for GRU4Rec on Ray Tune + Optuna."""
