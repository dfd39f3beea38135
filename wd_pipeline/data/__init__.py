"""Data in: locate and read a source, check it against the settings, split it and write the splits."""
