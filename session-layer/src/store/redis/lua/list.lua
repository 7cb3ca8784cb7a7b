-- ARGV: 1 prefix, 2 user, 3 now, 4 idle cutoff. Returns the active sessions as
-- {session id, field, value, ...} arrays, in no particular order.
local user, now = ARGV[2], tonumber(ARGV[3])
local out = {}
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', ukey(user), '(' .. ARGV[4], '+inf')) do
  local all = redis.call('HGETALL', skey(sid))
  if #all == 0 then
    redis.call('ZREM', ukey(user), sid)
  else
    local f = redis.call('HMGET', skey(sid), 'ra', 'e')
    if not f[1] and tonumber(f[2]) > now then out[#out + 1] = {sid, unpack(all)} end
  end
end
return out
