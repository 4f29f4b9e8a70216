"""dealsd: keeps a SQLite database of Amazon deals complete and current from Keepa."""

__version__ = "0.1.0"
