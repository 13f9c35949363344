"""The operations (plugins). Every module of this package is imported at start-up and its
`@op` functions registered; see `bot.discovery` for the other sources of ops."""
