"""File-format readers and the verified downloader behind hgsearch.data (the public entry point)."""
