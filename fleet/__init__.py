"""The local fleet: the whole CDN on one machine (origin, control plane, steering, edges)."""
