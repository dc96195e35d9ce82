-- Who stored, read, queried or deleted which study; and the change feed of stores and
-- deletes that downstream systems follow.

CREATE TABLE audit_events (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT  NOT NULL,
    who         TEXT    COLLATE "C" NOT NULL,
    via         TEXT    NOT NULL,
    address     TEXT,
    action      TEXT    NOT NULL,
    study_uid   TEXT    COLLATE "C",
    detail      TEXT
);
CREATE INDEX audit_events_study ON audit_events (study_uid, id);
CREATE INDEX audit_events_who ON audit_events (who, id);

CREATE TABLE changefeed (
    sequence          BIGSERIAL PRIMARY KEY,
    at                BIGINT  NOT NULL,
    action            TEXT    NOT NULL,
    study_uid         TEXT    COLLATE "C" NOT NULL,
    series_uid        TEXT    COLLATE "C" NOT NULL,
    sop_instance_uid  TEXT    COLLATE "C" NOT NULL
);
CREATE INDEX changefeed_sop ON changefeed (sop_instance_uid);
