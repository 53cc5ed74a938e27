-- pefnos schema v3: builds on workers. Masters wake when a request is
-- queued, and the dispatcher's question (how many builds of a builder run)
-- stays cheap.
SET LOCAL search_path = pefnos;

CREATE FUNCTION pefnos.notify_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('pefnos_request', '');
  RETURN NULL;
END $$;

-- Whoever queues a request (the scheduler, force_build, a GUI inserting a
-- row) wakes the dispatchers; once per statement, however many rows.
CREATE TRIGGER build_request_notify AFTER INSERT ON pefnos.build_request
  FOR EACH STATEMENT EXECUTE FUNCTION pefnos.notify_request();

CREATE INDEX build_running ON pefnos.build (builder_id) WHERE state IN ('pending', 'running');
-- A builder's latest builds, newest first (what the steps saw last time).
CREATE INDEX build_latest ON pefnos.build (builder_id, id);
