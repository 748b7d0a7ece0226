"""SQL metadata storage for semindex: documents, their metadata, and metadata filters."""
