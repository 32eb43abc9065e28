"""citynerve: the junction end of a city brain. This package holds the `citynerve` command."""

__version__ = "0.1.0"
