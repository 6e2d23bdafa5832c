"""Layer 4, engine: one training loop (`train.fit`), metrics, distances, losses."""
