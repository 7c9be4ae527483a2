"""Datasets: the format curation writes and training reads, synthetic data, and the loader."""
