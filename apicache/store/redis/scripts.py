"""
The Lua scripts of the Redis store.  Each runs atomically in Redis, which is
what the guarantees below rest on; the key layout is in
L{apicache.store.redis.codec}.
"""

from __future__ import annotations

from apicache.store.redis.codec import VARIANT_SUFFIX

__all__ = [
    "PUT",
    "PUT_TAGGED",
    "GET_OR_LOCK",
    "RELEASE",
    "CHANGE",
    "BUMP",
    "PURGE_TAG",
    "DROP_BATCH",
    "SWEEP_TAGS",
    "WATERMARKS_READ",
    "WATERMARKS_MERGE",
]

# Store an entry only if no invalidation covering it ran since the fetch
# began (the race rule across instances): the four generations read by
# RedisStore.begin must still hold.  Whatever the outcome, the coalescing
# lock is released if this instance holds it.  The index sets (resource,
# tenants) live at least as long as the entry, so an invalidation finds it.
# An untagged entry drops the tag record a tagged one under the same key
# left (it would make the new entry look purged).  Then the variants of its
# key (_VARIANTS).
# KEYS: entry, resource set, tenants set, g, G, T, A, lock, tag record,
#       then _VARIANTS' three
# ARGV: 4 generation tokens, value, ttl ms, instance id, then _VARIANTS' two
# Returns 1 if stored, 0 if refused.
# The race rule's check, shared by PUT and PUT_TAGGED: the four
# generations (resource, resource for every tenant, tenant, everything) must
# equal those read when the fetch began; the fetch's lock is released
# either way.  KEYS[4..8] and ARGV[1..4], ARGV[7] as those scripts say.
_GENERATIONS_UNCHANGED = """
local cur = redis.call('MGET', KEYS[4], KEYS[5], KEYS[6], KEYS[7])
local ok = true
for i = 1, 4 do
  local v = cur[i]
  if not v then v = '0' end
  if v ~= ARGV[i] then ok = false end
end
if redis.call('GET', KEYS[8]) == ARGV[7] then redis.call('DEL', KEYS[8]) end
if not ok then return 0 end
"""

# (v3) Variants (RFC 9111 section 4.1, see codec): a key holds either its
# own entry or a list of variants, each an entry under the key's entry key
# followed by the suffix and its selector in hex (32 characters, the first
# of its line in the list).  Storing an entry that serves every request
# drops its key's variants and list; storing a variant drops the key's own
# entry and puts the variant first in the list (replacing the one with its
# selector), dropping those past the most allowed (least recently used
# last).  The list lives as long as its longest-lived variant, and is in
# the resource set, so that an invalidation drops it with them.
# KEYS (the last three): the key's entry, its tag record, its variants list
# ARGV (the last two): the variant's line in the list ('' for an entry that
# serves every request), the most variants allowed
_VARIANTS = """
local vb, vn, vl = KEYS[#KEYS - 2], KEYS[#KEYS - 1], KEYS[#KEYS]
local vrec, vmax = ARGV[#ARGV - 1], tonumber(ARGV[#ARGV])
local vold = redis.call('GET', vl)
if vrec == '' then
  if vold then
    for h in string.gmatch(vold, '\\n(%x+)') do
      redis.call('DEL', vb .. 'SUFFIX' .. h, vn .. 'SUFFIX' .. h)
    end
    redis.call('DEL', vl)
  end
else
  redis.call('DEL', vb, vn)
  local sel = string.sub(vrec, 1, 32)
  local lines = {vrec}
  if vold then
    for line in string.gmatch(vold, '\\n([^\\n]+)') do
      local h = string.sub(line, 1, 32)
      if h ~= sel then
        if #lines < vmax then
          lines[#lines + 1] = line
        else
          redis.call('DEL', vb .. 'SUFFIX' .. h, vn .. 'SUFFIX' .. h)
        end
      end
    end
  end
  local vpx = redis.call('PTTL', vl)
  if vpx < tonumber(ARGV[6]) then vpx = tonumber(ARGV[6]) end
  redis.call('SET', vl, 'V-\\n' .. table.concat(lines, '\\n'), 'PX', vpx)
  redis.call('SADD', KEYS[2], vl)
end
""".replace("SUFFIX", VARIANT_SUFFIX)

PUT = _GENERATIONS_UNCHANGED + _VARIANTS + """local px = tonumber(ARGV[6])
redis.call('SET', KEYS[1], ARGV[5], 'PX', px)
redis.call('DEL', KEYS[9])
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('SADD', KEYS[3], KEYS[2])
for i = 2, 3 do
  if redis.call('PTTL', KEYS[i]) < px then redis.call('PEXPIRE', KEYS[i], px) end
end
return 1
"""

# Tags (SPEC.md section 3).  Under prefix P, with <t> an encoded tenant and
# <tag> an encoded tag (see codec):
#   P:seq            the sequence: every tag purge takes the next number
#   P:x:<t>:<tag>    latest purge (drop or refresh) of a tenant's tag
#   P:X:<tag>        latest purge of a tag for every tenant
#   P:y:<t>:<tag>    latest drop of a tenant's tag;  P:Y:<tag>: every tenant
#   P:n:<entry>      an entry's tag record: "<seq> <tag> <tag> ...", the
#                    sequence its fetch began under and its tags
#   P:z:<t>:<tag>    sorted set: the entry keys carrying it, scored by expiry
#   P:Z:<tag>        sorted set: the tenants with a P:z: set for it
#   P:L              lives as long as the longest-lived entry (PTTL only)
# A purge bumps a generation to the next sequence (O(1)); reading an entry
# compares its tags' generations with its sequence (GET_OR_LOCK), storing
# one compares them with its fetch's (PUT_TAGGED): so a purge takes effect
# for every later request at once, and the entries are deleted afterwards in
# bounded batches (DROP_BATCH).  Generations live longer than any entry
# carrying their tag (P:L), so an expired generation (read as 0) can't
# resurrect anything; see PURGE_TAG for how long they live.

# Store a tagged entry: PUT's checks, then every tag's generations must not
# be newer than the fetch's sequence (the race rule for tags); then the tag
# record and the sorted sets.  A few expired members are trimmed on the way.
# KEYS: entry, resource set, tenants set, g, G, T, A, lock, tag record, P:L,
#       then _VARIANTS' three
# ARGV: 4 generation tokens, value, ttl ms, instance id, sequence, prefix,
#       tenant, tag..., then _VARIANTS' two
# Returns 1 if stored, 0 if refused.
PUT_TAGGED = _GENERATIONS_UNCHANGED + """local seq = tonumber(ARGV[8])
local p, t = ARGV[9], ARGV[10]
for i = 11, #ARGV - 2 do
  local g = redis.call('MGET', p .. ':x:' .. t .. ':' .. ARGV[i], p .. ':X:' .. ARGV[i])
  if (g[1] and tonumber(g[1]) > seq) or (g[2] and tonumber(g[2]) > seq) then return 0 end
end
""" + _VARIANTS + """local px = tonumber(ARGV[6])
local now = redis.call('TIME')
local nowms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local exp = nowms + px
redis.call('SET', KEYS[1], ARGV[5], 'PX', px)
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('SADD', KEYS[3], KEYS[2])
for i = 2, 3 do
  if redis.call('PTTL', KEYS[i]) < px then redis.call('PEXPIRE', KEYS[i], px) end
end
local record = ARGV[8]
for i = 11, #ARGV - 2 do
  record = record .. ' ' .. ARGV[i]
  local z = p .. ':z:' .. t .. ':' .. ARGV[i]
  redis.call('ZADD', z, exp, KEYS[1])
  if redis.call('PTTL', z) < px then redis.call('PEXPIRE', z, px) end
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', nowms, 'LIMIT', 0, 16)
  if #old > 0 then redis.call('ZREM', z, unpack(old)) end
  local zt = p .. ':Z:' .. ARGV[i]
  redis.call('ZADD', zt, 'GT', exp, t)
  if redis.call('PTTL', zt) < px then redis.call('PEXPIRE', zt, px) end
end
redis.call('SET', KEYS[9], record, 'PX', px)
if redis.call('PTTL', KEYS[10]) < px then redis.call('SET', KEYS[10], '1', 'PX', px) end
return 1
"""

# Purge a tag of one tenant (ARGV tenant) or of every tenant (empty): bump
# its generations to the next sequence, publish, and then (drop) move each
# tenant's sorted set aside, for DROP_BATCH to work through, or (refresh)
# count the live entries.  O(1), or O(tenants holding the tag).
# How long a generation lives (SPEC.md section 3, v3: what a purge of a tag
# no entry carries leaves is bounded or expires): while an entry carries
# the tag (its P:z: set exists), past the longest-lived entry (P:L) and the
# fetch horizon; else only the fetch horizon, for the fetches in flight
# (RedisStore.put refuses a tagged answer of a fetch older than half of
# it), and then the latest drop (P:y:) is not needed either: whatever it
# covered is gone.  A generation's life is never shortened: entries a
# drop moved aside may still be waiting for DROP_BATCH.
# KEYS: P:seq, P:L
# ARGV: prefix, tenant or '', tag, '1' refresh | '0' drop, channel (or '':
#       publish nothing, the caller publishes once for several buckets),
#       message, fetch horizon ms
# Returns {sequence, entries counted, {moved set...}}.
PURGE_TAG = """
local seq = redis.call('INCR', KEYS[1])
local p, t, tag = ARGV[1], ARGV[2], ARGV[3]
local x, y
if t == '' then
  x = p .. ':X:' .. tag
  y = p .. ':Y:' .. tag
else
  x = p .. ':x:' .. t .. ':' .. tag
  y = p .. ':y:' .. t .. ':' .. tag
end
local tenants
if t == '' then tenants = redis.call('ZRANGE', p .. ':Z:' .. tag, 0, -1) else tenants = {t} end
local carried = false
for _, tt in ipairs(tenants) do
  if redis.call('EXISTS', p .. ':z:' .. tt .. ':' .. tag) == 1 then carried = true break end
end
local ttl = tonumber(ARGV[7])
if carried then
  local horizon = redis.call('PTTL', KEYS[2]) + 60000
  if horizon > ttl then ttl = horizon end
end
local function generation(k)
  if redis.call('PTTL', k) > ttl then
    redis.call('SET', k, seq, 'KEEPTTL')
  else
    redis.call('SET', k, seq, 'PX', ttl)
  end
end
generation(x)
if ARGV[4] == '0' and carried then generation(y) end
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
local now = redis.call('TIME')
local nowms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local n = 0
local moved = {}
for i, tt in ipairs(tenants) do
  local z = p .. ':z:' .. tt .. ':' .. tag
  if ARGV[4] == '1' then
    n = n + redis.call('ZCOUNT', z, nowms, '+inf')
  elseif redis.call('EXISTS', z) == 1 then
    local aside = p .. ':p:' .. seq .. ':' .. i
    redis.call('RENAME', z, aside)
    redis.call('PEXPIRE', aside, 3600000)
    moved[#moved + 1] = aside
  end
end
if t == '' and ARGV[4] == '0' then redis.call('DEL', p .. ':Z:' .. tag) end
return {seq, n, moved}
"""

# Delete up to ARGV[1] entries of a set PURGE_TAG moved aside, those stored
# before the purge (sequence below ARGV[2]); one stored again since is kept.
# KEYS: the set   ARGV: batch size, purge sequence, length of the prefix
# Returns {entries deleted, members left}.
DROP_BATCH = """
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
local purged = tonumber(ARGV[2])
local plen = tonumber(ARGV[3])
local n = 0
for i = 1, #popped, 2 do
  local k = popped[i]
  local record = string.sub(k, 1, plen) .. ':n:' .. string.sub(k, plen + 4)
  local r = redis.call('GET', record)
  if r and tonumber(string.match(r, '^%d+')) < purged then
    n = n + redis.call('UNLINK', k)
    redis.call('UNLINK', record)
  end
end
return {n, redis.call('ZCARD', KEYS[1])}
"""

# The background sweep: trim up to ARGV[1] expired members from each sorted
# set given (P:z: or P:Z:).
# KEYS: sorted sets   ARGV: most members per set
# Returns the members trimmed.
SWEEP_TAGS = """
local now = redis.call('TIME')
local nowms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local n = 0
for _, z in ipairs(KEYS) do
  if redis.call('TYPE', z)['ok'] == 'zset' then
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', nowms, 'LIMIT', 0, tonumber(ARGV[1]))
    if #old > 0 then n = n + redis.call('ZREM', z, unpack(old)) end
  end
end
return n
"""

# Read an entry, or else make this instance the one that fetches it
# (cross-instance coalescing): at most one instance holds a key's lock, for
# at most its ttl; the holder may take it again.
# A tagged entry is checked against its tags' generations first (see the
# tags layout below): one purged since it was stored is deleted and reads
# as missing; one refreshed since is returned as {3, ...}: serve it stale.
# (v3) A key that holds variants (_VARIANTS) returns its list, {4, list},
# without taking the lock (the caller loads the variant it chooses); a
# variant read moves first in its key's list (least recently used last).
# KEYS: entry, lock, tag record, the variants list of the key (of the
#       variant's key, when reading a variant)
# ARGV: instance id, lock ttl ms (0: no locking), prefix, tenant, the
#       variant's selector in hex ('' when reading a key)
# Returns {0, value, tag record or false} if there is a value (3: stale by
# a tag); {4, list}; else {1} (the lock is ours, or locking is off: fetch)
# or {2} (another instance holds it: wait).
GET_OR_LOCK = """
local function touch(sel)
  local l = redis.call('GET', KEYS[4])
  if (not l) or string.sub(l, 4, 35) == sel then return end
  local first, rest = nil, {}
  for line in string.gmatch(l, '\\n([^\\n]+)') do
    if string.sub(line, 1, 32) == sel then first = line else rest[#rest + 1] = line end
  end
  if first then
    table.insert(rest, 1, first)
    redis.call('SET', KEYS[4], string.sub(l, 1, 2) .. '\\n' .. table.concat(rest, '\\n'), 'KEEPTTL')
  end
end
local v = redis.call('GET', KEYS[1])
if v then
  local record = redis.call('GET', KEYS[3])
  if not record then
    if ARGV[5] ~= '' then touch(ARGV[5]) end
    return {0, v, false}
  end
  local verdict = 0
  local seq = nil
  local p, t = ARGV[3], ARGV[4]
  for w in string.gmatch(record, '%S+') do
    if not seq then
      seq = tonumber(w)
    else
      local g = redis.call('MGET', p .. ':x:' .. t .. ':' .. w, p .. ':X:' .. w)
      if (g[1] and tonumber(g[1]) > seq) or (g[2] and tonumber(g[2]) > seq) then
        local d = redis.call('MGET', p .. ':y:' .. t .. ':' .. w, p .. ':Y:' .. w)
        if (d[1] and tonumber(d[1]) > seq) or (d[2] and tonumber(d[2]) > seq) then
          verdict = 1
          break
        end
        verdict = 3
      end
    end
  end
  if verdict ~= 1 then
    if ARGV[5] ~= '' then touch(ARGV[5]) end
    return {verdict, v, record}
  end
  redis.call('DEL', KEYS[1], KEYS[3])
end
if ARGV[5] == '' then
  local l = redis.call('GET', KEYS[4])
  if l then return {4, l} end
end
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
# A key's list of variants (P:v:, in the resource set with them) is dropped
# with them, neither marked nor counted.
# KEYS: generation, then either a resource set (one tenant) or the tenants set
# ARGV: mode ('one' | 'all'), action ('drop' | 'stale'), channel (or '': see
#       PURGE_TAG), message, generation ttl, the prefix of the lists of
#       variants ('P:v:')
# Returns the number of entries dropped or marked.
CHANGE = """
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local sets
if ARGV[1] == 'one' then sets = {KEYS[2]} else sets = redis.call('SMEMBERS', KEYS[2]) end
local n = 0
for _, s in ipairs(sets) do
  for _, k in ipairs(redis.call('SMEMBERS', s)) do
    if string.sub(k, 1, #ARGV[6]) == ARGV[6] then
      if ARGV[2] == 'drop' then redis.call('DEL', k) end
    elseif ARGV[2] == 'drop' then
      n = n + redis.call('DEL', k)
    elseif redis.call('EXISTS', k) == 1 then
      redis.call('SETRANGE', k, 1, '\\1')
      n = n + 1
    end
  end
  if ARGV[2] == 'drop' then redis.call('DEL', s) end
end
if ARGV[2] == 'drop' and ARGV[1] == 'all' then redis.call('DEL', KEYS[2]) end
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return n
"""

# Bump one generation (a tenant's, or everything's) and publish the change:
# the first step of /clear, so that no fetch in flight stores after it,
# before the keys are scanned away.
# KEYS: generation   ARGV: channel (or '': see PURGE_TAG), message, generation ttl
# Returns 1.
BUMP = """
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
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
