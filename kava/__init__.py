"""KaVa."""
