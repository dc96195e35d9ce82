-- Store-and-forward: one job per (destination, instance), written in the transaction that
-- indexes the instance. A job is pending until delivered (or failed for good); a process
-- works on it under a lease that expires if the process dies.

CREATE TABLE forward_jobs (
    id                BIGSERIAL PRIMARY KEY,
    destination       TEXT    NOT NULL,
    sop_instance_uid  TEXT    NOT NULL,
    study_uid         TEXT    NOT NULL,
    state             TEXT    NOT NULL DEFAULT 'pending',
    attempts          BIGINT  NOT NULL DEFAULT 0,
    not_before        BIGINT  NOT NULL,
    lease_owner       TEXT,
    lease_until       BIGINT,
    last_error        TEXT,
    created_at        BIGINT  NOT NULL,
    delivered_at      BIGINT,
    UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX forward_jobs_due ON forward_jobs (destination, state, not_before);
CREATE INDEX forward_jobs_study ON forward_jobs (study_uid);
