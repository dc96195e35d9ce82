-- Store-and-forward: one job per (destination, instance), written in the transaction that
-- indexes the instance. A job is pending until delivered (or failed for good); a process
-- works on it under a lease that expires if the process dies.

CREATE TABLE forward_jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    destination       TEXT    NOT NULL,
    sop_instance_uid  TEXT    NOT NULL,
    study_uid         TEXT    NOT NULL,
    state             TEXT    NOT NULL DEFAULT 'pending',
    attempts          INTEGER NOT NULL DEFAULT 0,
    not_before        INTEGER NOT NULL,
    lease_owner       TEXT,
    lease_until       INTEGER,
    last_error        TEXT,
    created_at        INTEGER NOT NULL,
    delivered_at      INTEGER,
    UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX forward_jobs_due ON forward_jobs (destination, state, not_before);
CREATE INDEX forward_jobs_study ON forward_jobs (study_uid);
