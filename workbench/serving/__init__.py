"""Serving a model over HTTP: an OpenAI-compatible API over a continuous-batching scheduler."""
