"""Saved models: fitted classifiers (.skops) and torch heads or networks (.safetensors), each with a JSON card
saying what it needs to predict (classes, the features' recipe) and how well it did; the head networks."""
