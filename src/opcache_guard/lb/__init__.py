"""Load balancer backends. Importing this package registers every backend."""
