-- Shared by every script (prepended to each). Keys, under the prefix p:
--   p:s:<session id>  hash: u user, h current hash, r retired hashes (64 hex each, concatenated),
--                     c created, a last active, e expires, ra revoked at, rr reason (unix µs),
--                     d device, dt device type, dn device name, ua user agent, ip
--   p:t:<hash>        "c:<session id>" (current) or "r:<session id>" (retired)
--   p:u:<user>        zset of the user's session ids, scored by last activity
--   p:f:<user>        the user's fence epoch
--   p:exp, p:rev      zsets of session ids by expiry and by revocation time (for cleanup)
-- Times are unix microseconds, passed and stored as decimal strings and compared as numbers
-- (exact below 2^53 µs, the year 2255).
local p = ARGV[1]

local function skey(sid) return p .. ':s:' .. sid end
local function tkey(hash) return p .. ':t:' .. hash end
local function ukey(user) return p .. ':u:' .. user end

-- Soft delete: the row stays (with its token keys) until cleanup, so reuse is still recognised.
local function revoke(sid, created, now, reason)
  local at = now
  if tonumber(created) > tonumber(now) then at = created end
  redis.call('HSET', skey(sid), 'ra', at, 'rr', reason)
  redis.call('ZADD', p .. ':rev', at, sid)
end

-- Moves last activity forward (never back) on a session that is not revoked.
local function touch(sid, at)
  local f = redis.call('HMGET', skey(sid), 'u', 'ra', 'a')
  if f[1] and not f[2] and tonumber(f[3]) < tonumber(at) then
    redis.call('HSET', skey(sid), 'a', at)
    redis.call('ZADD', ukey(f[1]), 'XX', at, sid)
  end
end

-- Publishes revoked hashes on the invalidation channel in the same atomic step as the write;
-- header is "" when no instance listens for them.
local function publish(channel, header, hashes)
  if header ~= '' and #hashes > 0 then
    redis.call('PUBLISH', channel, header .. table.concat(hashes, ','))
  end
end

