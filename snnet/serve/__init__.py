"""serve.py: HTTP inference over an SN-Net's frontier with dynamic batching and a latency controller."""
