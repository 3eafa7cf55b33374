"""Models: repository scanning, config.pbtxt, versions, the manager that loads and serves them."""
