"""control component."""
