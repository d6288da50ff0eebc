"""Pure-JAX graphics engines that the agent paints with."""
