"""Built-in tasks; each module is one task family."""
