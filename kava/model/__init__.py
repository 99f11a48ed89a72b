"""Backbone loading, importance-capturing attention, cache access and the latent student."""
