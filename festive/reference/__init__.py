"""Build the shipped reference index from real Debian library packages."""
