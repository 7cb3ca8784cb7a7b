-- Shared by every script (prepended to each). Keys, under the prefix p:
--   p:s:<session id>  hash: u user, h current hash, r retired hashes (64 hex each, concatenated),
--                     c created, a last active, e expires, ra revoked at, rr reason,
--                     rs revoked at by the server's clock (times in unix µs),
--                     d device, dt device type, dn device name, ua user agent, ip
--   p:t:<hash>        "c:<session id>" (current) or "r:<session id>" (retired)
--   p:u:<user>        zset of the user's session ids, scored by last activity
--   p:f:<user>        the user's fence epoch (at least the server's clock at its last advance)
--   p:exp, p:rev      zsets of session ids by expiry and by revocation time (for cleanup)
-- Times are unix microseconds, passed and stored as decimal strings and compared as numbers
-- (exact below 2^53 µs, the year 2255).
local p = ARGV[1]

local function skey(sid) return p .. ':s:' .. sid end
local function tkey(hash) return p .. ':t:' .. hash end
local function ukey(user) return p .. ':u:' .. user end

-- The server's clock in unix µs: for what must not depend on the callers' clocks.
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Soft delete: the row stays (with its token keys) until cleanup, so reuse is still recognised.
-- rs is the server's time of the revocation (a repeated revoke_all's "moments ago").
local function revoke(sid, created, now, reason)
  local at = now
  local c = tonumber(created)
  if c and c > tonumber(now) then at = created end
  redis.call('HSET', skey(sid), 'ra', at, 'rr', reason, 'rs', string.format('%.0f', server_now()))
  redis.call('ZADD', p .. ':rev', at, sid)
end

-- Advances a user's fence past its old epoch and past the server's clock, so that a fence key
-- lost to eviction or a hand-made DEL never hands out an epoch again.
local function advance_fence(user)
  local key = p .. ':f:' .. user
  local epoch = math.max((tonumber(redis.call('GET', key)) or 0) + 1, server_now())
  redis.call('SET', key, string.format('%.0f', epoch))
end

-- Moves last activity forward (never back) on a session that is not revoked.
local function touch(sid, at)
  local f = redis.call('HMGET', skey(sid), 'u', 'ra', 'a')
  local a = tonumber(f[3])
  if f[1] and not f[2] and a and a < tonumber(at) then
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


-- Runs body (which fills revoked) under pcall, publishes whatever it revoked even when it
-- failed half-way (Redis keeps a script's writes), and returns {published count, revoked
-- hashes, error message or ''}.
local function revoking(channel, header, body)
  local revoked, published = {}, {}
  local ok, err = pcall(body, revoked, published)
  publish(channel, header, published)
  return {tostring(#published), revoked, ok and '' or tostring(err)}
end
