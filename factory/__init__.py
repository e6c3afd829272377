"""The open synthetic-data factory: captions → curate → synthesize → score → global top-K."""
__version__ = "0.1.0"
