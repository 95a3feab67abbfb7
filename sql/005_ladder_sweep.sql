-- 005_ladder_sweep.sql: reserved for the set-based ladder sweep.
SELECT 1;
