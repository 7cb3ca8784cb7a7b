-- ARGV: 1 prefix, 2 user, 3 session id, 4 reason, 5 now, 6 channel, 7 header.
-- Returns the revoked session's current hash, or nil.
local sid = ARGV[3]
local f = redis.call('HMGET', skey(sid), 'u', 'ra', 'e', 'c', 'h')
if f[1] ~= ARGV[2] or f[2] or tonumber(f[3]) <= tonumber(ARGV[5]) then return nil end
revoke(sid, f[4], ARGV[5], ARGV[4])
publish(ARGV[6], ARGV[7], {f[5]})
return f[5]
