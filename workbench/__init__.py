"""gptbench: train, watch and talk to small GPT models from a terminal."""

__version__ = "0.1.0"
