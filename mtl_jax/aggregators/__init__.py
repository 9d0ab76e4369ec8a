"""Task weighting and gradient aggregation methods (optax aggregators)."""
