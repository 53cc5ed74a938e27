-- pefnos schema v6: a force-build command makes its build request once.
-- A master killed after the request's commit and before the command's
-- outcome runs the command again when it (or another master) takes it over;
-- the request names its command, so the second run finds the first request
-- instead of queuing another.
SET LOCAL search_path = pefnos;

ALTER TABLE pefnos.build_request
  ADD COLUMN command_id bigint UNIQUE REFERENCES pefnos.command ON DELETE SET NULL;
