"""origin component."""
