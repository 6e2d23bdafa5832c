"""Layer 6, world: udet-mini, the generators' trainers, the zoo, and the stand-in weights handed to methods."""
