-- ARGV: 1 prefix, then (session id, at) pairs.
for i = 2, #ARGV - 1, 2 do touch(ARGV[i], ARGV[i + 1]) end
return 0
