"""steering component."""
