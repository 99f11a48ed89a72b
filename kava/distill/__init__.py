"""Teacher-cache compression (R-KV) and the distillation losses."""
