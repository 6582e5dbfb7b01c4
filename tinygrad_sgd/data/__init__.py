"""Datasets, DataLoader, samplers and batch-size schedules (tg.data)."""
