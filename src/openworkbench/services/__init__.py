"""Services: what the API and the CLI do, on top of the store and the clusters."""
