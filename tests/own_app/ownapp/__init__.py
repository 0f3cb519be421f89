"""ownapp: a user's Flower app running full ACME on its own data (the tutorial's app)."""
