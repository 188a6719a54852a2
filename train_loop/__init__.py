"""Fine-tune OpenAI Whisper on a new language. The map of the package: docs/architecture.md."""
