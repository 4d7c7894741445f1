"""capidsl: a declarative training DSL for JAX."""
