-- Who stored, read, queried or deleted which study; and the change feed of stores and
-- deletes that downstream systems follow.

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    who         TEXT    NOT NULL,
    via         TEXT    NOT NULL,
    address     TEXT,
    action      TEXT    NOT NULL,
    study_uid   TEXT,
    detail      TEXT
);
CREATE INDEX audit_events_study ON audit_events (study_uid, id);
CREATE INDEX audit_events_who ON audit_events (who, id);

CREATE TABLE changefeed (
    sequence          INTEGER PRIMARY KEY AUTOINCREMENT,
    at                INTEGER NOT NULL,
    action            TEXT    NOT NULL,
    study_uid         TEXT    NOT NULL,
    series_uid        TEXT    NOT NULL,
    sop_instance_uid  TEXT    NOT NULL
);
CREATE INDEX changefeed_sop ON changefeed (sop_instance_uid);
