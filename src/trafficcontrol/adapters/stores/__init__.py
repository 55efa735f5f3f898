"""Journal stores. ``open_journal(url)`` picks the implementation from the URL."""
