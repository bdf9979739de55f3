"""The reference player (``python -m control.player``): plays a title through the CDN as a
real HLS player does (sign-in, playback start, BBA rate adaptation, failover along the ranked
edges, progress heartbeats) and prints a QoE summary. See session.py."""
