-- The privileges of the role the desk runs as (PostgreSQL; README "Running in production").
--
-- Run by the role that owns the desk's tables, the one that runs `flask --app wsgi db upgrade`,
-- after every upgrade (a migration may add tables; running it again changes nothing else):
--   psql "$OWNER_URL" -v ON_ERROR_STOP=1 -v app_role=iep_app -f scripts/app_role.sql
-- The tests run this very file: the PostgreSQL pass's desk connects as such a role
-- (tests/conftest.py), and tests/test_audit_truncate.py checks what it refuses.

-- Rows, not schema: no TRUNCATE, REFERENCES or TRIGGER anywhere, and no ownership.
GRANT USAGE ON SCHEMA public TO :"app_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app_role";
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO :"app_role";

-- The audit trail is read and appended to, never rewritten (app/audit.py).
REVOKE UPDATE, DELETE ON audit_events FROM :"app_role";

-- Which migrations ran is the owner's to say.
REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM :"app_role";
