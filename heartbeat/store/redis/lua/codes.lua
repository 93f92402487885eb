-- What a ping's step returns, in both layouts: the one table the Python reads
-- (heartbeat.store.redis.lua.CODES). A ping refused (the user's key holds
-- something else) returns the error's text instead.
local STORED = 1        -- stored, armed and published
local CAME_ONLINE = 2   -- stored, and the user came online with it
local HIDDEN = 3        -- hides (HIDDEN_STATUSES): armed, its device offline, nothing stored
local WENT_OFFLINE = 4  -- hides, and the user went offline with it
local NEEDS_ARM = 5     -- a Cluster: nothing stored, the device's index entry must be armed first
