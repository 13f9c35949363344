"""Redis below everything that uses it: key names, Lua scripts (lua/), connections, the metrics
hash's fields."""
