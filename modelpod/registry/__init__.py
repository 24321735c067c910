"""Where models are recorded and found: the store, its artifacts, and RemoteModel."""
