-- Every change of a user goes out through here, in the step that made it:
-- a step that must accompany each change (a change-feed append) goes here.
local function emit(key, message)
  redis.call(PUBLISH, key, message)
end
