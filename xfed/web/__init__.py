"""The read-only status page (`xfed -c serve`): a standard-library HTTP server over xfed.broker reads."""
