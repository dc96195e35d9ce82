-- PostgreSQL only (a function that records an instance in one round trip); SQLite's writer
-- runs in this process and needs none. Kept so both backends count the same migrations.
SELECT 1;
