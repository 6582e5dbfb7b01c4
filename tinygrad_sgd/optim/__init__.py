"""Optimizers and learning-rate schedules (tg.optim)."""
