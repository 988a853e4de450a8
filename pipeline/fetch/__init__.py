"""Getting checkpoint files onto local disk: http(s), Google Drive, the Hub, object stores, mirrors."""
