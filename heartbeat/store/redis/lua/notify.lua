--! needs: emit
-- Publishes ARGV[1] on the channel KEYS[1] (named as a key, so a Cluster runs it on
-- the channel's shard): the instances' control channel (disconnect a user).
emit(KEYS[1], ARGV[1])
return 1
