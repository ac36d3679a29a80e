"""One module per `gptbench` subcommand."""
