"""Experiments: whole recipes that train toy models and measure them (learn_check: does subject conditioning learn?)."""
