"""`make run`: the whole pipeline on the bundled sample data, through the code location's own
definitions, then a summary. The definitions never import this package."""
