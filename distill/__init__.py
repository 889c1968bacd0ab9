"""Distillation: train a pruned or smaller student graph to reproduce its float teacher's outputs."""
