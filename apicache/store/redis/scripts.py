"""
The Lua scripts of the Redis store.  Each runs atomically in Redis, which is
what the guarantees below rest on; the key layout is in
L{apicache.store.redis.codec}.
"""

from __future__ import annotations

__all__ = ["PUT", "GET_OR_LOCK", "RELEASE", "CHANGE", "BUMP", "WATERMARKS_READ", "WATERMARKS_MERGE"]

# Store an entry only if no invalidation covering it ran since the fetch
# began (the race rule across instances): the four generations read by
# RedisStore.begin must still hold.  Whatever the outcome, the coalescing
# lock is released if this instance holds it.  The index sets (resource,
# tenants) live at least as long as the entry, so an invalidation finds it.
# KEYS: entry, resource set, tenants set, g, G, T, A, lock
# ARGV: 4 generation tokens, value, ttl ms, instance id
# Returns 1 if stored, 0 if refused.
PUT = """
local cur = redis.call('MGET', KEYS[4], KEYS[5], KEYS[6], KEYS[7])
local ok = true
for i = 1, 4 do
  local v = cur[i]
  if not v then v = '0' end
  if v ~= ARGV[i] then ok = false end
end
if redis.call('GET', KEYS[8]) == ARGV[7] then redis.call('DEL', KEYS[8]) end
if not ok then return 0 end
local px = tonumber(ARGV[6])
redis.call('SET', KEYS[1], ARGV[5], 'PX', px)
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('SADD', KEYS[3], KEYS[2])
for i = 2, 3 do
  if redis.call('PTTL', KEYS[i]) < px then redis.call('PEXPIRE', KEYS[i], px) end
end
return 1
"""

# Read an entry, or else make this instance the one that fetches it
# (cross-instance coalescing): at most one instance holds a key's lock, for
# at most its ttl; the holder may take it again.
# KEYS: entry, lock   ARGV: instance id, lock ttl ms (0: no locking)
# Returns {0, value} if there is a value; else {1} (the lock is ours, or
# locking is off: fetch) or {2} (another instance holds it: wait).
GET_OR_LOCK = """
local v = redis.call('GET', KEYS[1])
if v then return {0, v} end
if ARGV[2] == '0' then return {1} end
local owner = redis.call('GET', KEYS[2])
if (not owner) or owner == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {1}
end
return {2}
"""

# Release a coalescing lock only if this instance still holds it (it may
# have expired and been taken by another).
# KEYS: lock   ARGV: instance id
# Returns 1 if released, 0 otherwise.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Invalidate (drop) or mark stale every variant of a resource, for one tenant
# or every tenant.  The generation is bumped first, in the same script, so a
# fetch in flight can't store what this removed (PUT refuses it); the stale
# flag is set in place (byte STALE_OFFSET = 1 of the value) without touching
# the entry's expiry.  The invalidation is published on the channel from
# inside the script, so every instance that is subscribed hears of every
# change that happened.
# KEYS: generation, then either a resource set (one tenant) or the tenants set
# ARGV: mode ('one' | 'all'), action ('drop' | 'stale'), channel, message, generation ttl
# Returns the number of entries dropped or marked.
CHANGE = """
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local sets
if ARGV[1] == 'one' then sets = {KEYS[2]} else sets = redis.call('SMEMBERS', KEYS[2]) end
local n = 0
for _, s in ipairs(sets) do
  for _, k in ipairs(redis.call('SMEMBERS', s)) do
    if ARGV[2] == 'drop' then
      n = n + redis.call('DEL', k)
    elseif redis.call('EXISTS', k) == 1 then
      redis.call('SETRANGE', k, 1, '\\1')
      n = n + 1
    end
  end
  if ARGV[2] == 'drop' then redis.call('DEL', s) end
end
if ARGV[2] == 'drop' and ARGV[1] == 'all' then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return n
"""

# Bump one generation (a tenant's, or everything's) and publish the change:
# the first step of /clear, so that no fetch in flight stores after it,
# before the keys are scanned away.
# KEYS: generation   ARGV: channel, message, generation ttl
# Returns 1.
BUMP = """
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""

# The event watermarks of a consumer group (SPEC.md section 5): read them
# with Redis's own clock, in one step, so that a reader can bracket the
# offset between that clock and its own by the call's round trip.
# KEYS: the hash (field "topic:partition" -> a time of Redis's clock)
# Returns {TIME seconds, TIME microseconds, {field, value, ...}}.
WATERMARKS_READ = """
local t = redis.call('TIME')
return {t[1], t[2], redis.call('HGETALL', KEYS[1])}
"""

# Merge marks into the hash, each field keeping the larger time: W_p never
# decreases, whichever instance publishes it.
# KEYS: the hash; ARGV: field, time pairs.  Returns 1.
WATERMARKS_MERGE = """
for i = 1, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]))
  if old == nil or tonumber(ARGV[i + 1]) > old then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""
