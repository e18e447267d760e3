"""feedback package."""
