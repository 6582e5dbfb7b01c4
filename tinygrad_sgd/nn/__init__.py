"""Neural-network layers, losses, initialisation and utilities (tg.nn)."""
