"""The reproduction harness: deploy self-validating PHP code under load and detect corruption."""
