"""Data loading, synthetic data generation and tokenizers."""
