"""mtl_jax."""
