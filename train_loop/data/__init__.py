"""The data path: rows -> decoded audio -> features and labels -> batches (prepared or streamed).
Imports only ``core``."""
