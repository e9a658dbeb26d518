"""Features, training and scoring of the churn and purchase-probability models (LightGBM).

Not built yet: the `train` and `score` commands and the scoring agent arrive with the modelling work.
"""
