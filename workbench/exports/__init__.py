"""Exports of a trained model to the file formats of other runtimes (GGUF for llama.cpp)."""
