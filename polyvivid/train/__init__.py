"""Progressive multi-node training of PolyVivid (what a PolyVividTraining runs)."""
