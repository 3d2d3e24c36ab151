"""SQL routing and local answers: the router (pure, cached by SQL text), parse-tree helpers, the
local statement compiler and runner, wire encoding of local results, and the predict rewrites."""
