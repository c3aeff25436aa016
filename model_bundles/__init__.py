"""model_bundles."""
