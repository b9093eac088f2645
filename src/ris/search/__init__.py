"""Search a new image: the searcher, its result grids."""
