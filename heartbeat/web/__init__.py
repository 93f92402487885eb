"""The HTTP edge: one protocol per connection, the Klein routes behind it, CORS, errors as HTTP."""
