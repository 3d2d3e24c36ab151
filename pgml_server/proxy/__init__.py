"""One client connection: the session (startup, relayed authentication, the message loop and the
relay fast paths), its asyncio Protocol adapters, its upstream connection and cancel keys."""
