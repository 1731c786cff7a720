-- Archive a closed campaign's users and slots: the set and the hash that
-- grow with its slots are deleted, its meta, count and close's mark kept.
--
-- KEYS[1]  coupon:{c}:closed  STRING, the close's mark, written first
-- KEYS[2]  coupon:{c}:users   SET, deleted
-- KEYS[3]  coupon:{c}:slots   HASH, deleted
--
-- The mark is written in the same step (close.lua's, idempotent), so the
-- users set is never gone from a gate that could still take a slot: a gate
-- without it would let a user who holds a slot take a second one. UNLINK:
-- a large campaign's set is freed on Redis's background thread.
--
-- Returns how many of the two keys it deleted.
redis.call('SET', KEYS[1], '1')
return redis.call('UNLINK', KEYS[2], KEYS[3])
