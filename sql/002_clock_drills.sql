-- 002_clock_drills.sql: the guards' clock (prepaid.clock, prepaid.now())
-- moves only where the owner allowed it. prepaid.now() decides when homes
-- are cut off (trip guards, quiet hours, grace, due times): in a default
-- install its offset stays 0, whoever asks. Drills and tests set movable
-- (as the owner: --migrate's login, or a superuser); every move is audited
-- in prepaid.operator_audit with the login role that made it.
ALTER TABLE prepaid.clock ADD COLUMN movable boolean NOT NULL DEFAULT false;
