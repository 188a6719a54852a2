"""What a run leaves behind: the log and metrics.jsonl, trackers, the model card, curves.png,
the Hub upload."""
