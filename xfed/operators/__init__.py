"""Built-in operators; each is a package `xfed.operators.<name>` found through `registry`."""
