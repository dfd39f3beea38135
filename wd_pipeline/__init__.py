"""Weight-decay study as a library."""
