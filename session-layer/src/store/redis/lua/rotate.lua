-- ARGV: 1 prefix, 2 session id, 3 user, 4 current hash, 5 new hash, 6 now, 7 idle cutoff,
-- 8 channel, 9 header. Returns nil when any condition fails, else the session's fields.
local sid, user, current, new = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local f = redis.call('HMGET', skey(sid), 'u', 'h', 'ra', 'e', 'a', 'r')
if f[1] ~= user or f[2] ~= current or f[3] or tonumber(f[4]) <= tonumber(ARGV[6])
    or tonumber(f[5]) <= tonumber(ARGV[7]) then
  return nil
end
if redis.call('EXISTS', tkey(new)) == 1 then
  return redis.error_reply('duplicate token hash')
end
local ttl = redis.call('PTTL', skey(sid))
redis.call('HSET', skey(sid), 'h', new, 'r', (f[6] or '') .. current)
redis.call('SET', tkey(current), 'r:' .. sid)
redis.call('SET', tkey(new), 'c:' .. sid)
if ttl > 0 then
  redis.call('PEXPIRE', tkey(current), ttl)
  redis.call('PEXPIRE', tkey(new), ttl)
end
publish(ARGV[8], ARGV[9], {current})
return {sid, unpack(redis.call('HGETALL', skey(sid)))}
