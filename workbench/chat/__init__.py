"""Chat models: conversation data for supervised fine-tuning, vocabulary growth, chat sessions."""
