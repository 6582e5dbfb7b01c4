"""Gradient transforms and penalties (tg.nn.utils)."""
